"""What MFFMTCore promises under bad input and careless use: never a wrong answer, never a lost result.

Each test is one promise, stated in its name. Inputs are small synthetic files; the lock is tested
with two real processes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_train_synthetic import write_dataset

from MFFMTCore.cli import main
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import ImageReadError, write_json_atomic
from MFFMTCore.folder_lock import LOCK_NAME, FolderLock, FolderLockedError
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.model_file import (
    ModelFileError,
    ModelInfo,
    load_model,
    model_checksum,
    read_model_info,
    save_model,
    weights_checksum,
)
from MFFMTCore.network import MFFMT
from MFFMTCore.training import checkpoint as checkpoint_module

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "MFFMTCore"


def strict_json(path: Path):
    """Parse ``path`` as strict JSON: bare NaN / Infinity tokens fail."""

    def refuse(token: str):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def rows_of(output: Path) -> dict[str, list[dict[str, str]]]:
    with open(output / "results.csv", newline="") as handle:
        rows: dict[str, list[dict[str, str]]] = {}
        for row in csv.DictReader(handle):
            rows.setdefault(Path(row["input"]).name, []).append(row)
    return rows


def write_png(path: Path, shape=(48, 64), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))
    return path


def predict(model: Path, output: Path, *inputs: Path | str, extra: tuple[str, ...] = ()) -> int:
    return main(["predict", *map(str, inputs), "--output", str(output), "--model", str(model),
                 "--progress", "none", "--threads", "1", *extra])


def rewrite_header(source: Path, target: Path, change, resign: bool = True) -> Path:
    """Copy a model file with its metadata changed by ``change(metadata)``; ``resign`` recomputes the
    checksum, so that what is tested is the field check rather than the checksum."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    change(metadata)
    if resign:
        metadata["sha256"] = model_checksum(tensors, metadata)
    save_file(tensors, str(target), metadata=metadata)
    return target


def edit_info(**changes):
    def change(metadata):
        info = json.loads(metadata["info"])
        info.update(changes)
        metadata["info"] = json.dumps(info)
    return change


# ------------------------------------------------------------------ pixels and sizes


def test_a_nan_or_infinite_pixel_is_an_error_row_never_a_benign_answer(model_path, tmp_path):
    good = write_png(tmp_path / "in" / "good.png")
    for name, value in (("nan.nrrd", np.nan), ("inf.nrrd", np.inf)):
        pixels = np.random.default_rng(1).random((48, 64)).astype(np.float32)
        pixels[10, 20] = value
        sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp_path / "in" / name))
    output = tmp_path / "out"
    assert predict(model_path, output, tmp_path / "in" / "nan.nrrd", tmp_path / "in" / "inf.nrrd", good) == 1
    rows = rows_of(output)
    for name in ("nan.nrrd", "inf.nrrd"):
        (row,) = rows[name]
        assert name in row["error"] and "NaN or infinite" in row["error"]
        assert row["p_malignant"] == row["prediction"] == ""
        assert not (output / f"{Path(name).stem}_overlay.png").exists()
    assert rows["good.png"][0]["prediction"] in ("benign", "malignant")
    strict_json(output / "results.json")

    frame = np.ones((40, 40), np.float32)
    frame[3, 3] = -np.inf
    with pytest.raises(ImageReadError, match="frame 0 holds 1 NaN or infinite"):
        Predictor(model_path).predict(frame)


def test_evaluate_lists_a_nan_image_as_failed_and_scores_the_others(model_path, tmp_path):
    datalist = write_dataset(tmp_path / "data", count=6)
    items = json.loads(datalist.read_text())["training"]
    pixels = np.full((72, 72), 100, np.float32)
    pixels[5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp_path / "data" / "nan.nrrd"))
    items.append({"image": "nan.nrrd", "label": "malignant"})
    datalist.write_text(json.dumps({"training": items}))
    output = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model_path), "--data", str(datalist), "--output", str(output),
                 "--threads", "1", "--progress", "none"]) == 1
    metrics = strict_json(output / "metrics.json")
    assert metrics["samples"] == 6
    (failure,) = metrics["failed"]
    assert "nan.nrrd" in failure["error"] and "NaN or infinite" in failure["error"]


def test_an_image_or_roi_under_32_pixels_is_refused(model_path, tmp_path):
    tiny = write_png(tmp_path / "in" / "tiny.png", shape=(1, 1))
    good = write_png(tmp_path / "in" / "good.png")
    assert predict(model_path, tmp_path / "out", tiny, good) == 1
    rows = rows_of(tmp_path / "out")
    assert "1x1 pixels is smaller than the 32x32 minimum" in rows["tiny.png"][0]["error"]
    assert rows["good.png"][0]["error"] == ""

    assert predict(model_path, tmp_path / "roi", good, extra=("--roi", "5,5,1,1")) == 1
    assert "ROI (5, 5, 1, 1) of 1x1 pixels is smaller" in rows_of(tmp_path / "roi")["good.png"][0]["error"]


def test_a_symbolic_link_loop_is_an_error_row_and_the_batch_goes_on(model_path, tmp_path):
    loop = tmp_path / "in" / "loop.png"
    loop.parent.mkdir()
    os.symlink(loop, loop)
    good = write_png(tmp_path / "in" / "good.png")
    assert predict(model_path, tmp_path / "out", loop, good) == 1
    rows = rows_of(tmp_path / "out")
    assert str(loop) in rows["loop.png"][0]["error"]
    assert rows["good.png"][0]["prediction"]


# ------------------------------------------------------------------ strict JSON


def test_every_json_written_is_strict():
    with pytest.raises(ValueError):
        write_json_atomic(Path("/nonexistent/never-written.json"), {"auc": float("nan")})
    # Every json.dumps in the package either refuses NaN or goes through io.json_text, which does.
    offenders = []
    for path in CORE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        for match in re.finditer(r"json\.dumps\(", source):
            depth, position = 0, match.end() - 1
            while True:  # to the call's closing parenthesis
                depth += {"(": 1, ")": -1}.get(source[position], 0)
                if depth == 0:
                    break
                position += 1
            if "allow_nan=False" not in source[match.start():position]:
                offenders.append(f"{path.relative_to(REPO)}: {source[match.start():position + 1]}")
    assert offenders == []


# ------------------------------------------------------------------ the model file


def test_an_edited_model_header_is_refused_by_the_checksum(model_path, tmp_path):
    swapped = rewrite_header(model_path, tmp_path / "swapped.safetensors",
                             edit_info(class_names=["malignant", "benign"]), resign=False)
    for read in (read_model_info, load_model):
        with pytest.raises(ModelFileError, match=f"{re.escape(str(swapped))}: checksum mismatch"):
            read(swapped)
    added = rewrite_header(model_path, tmp_path / "added.safetensors",
                           lambda metadata: metadata.update(temperature="3.0"), resign=False)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        read_model_info(added)  # a field added later is covered without any change to the checksum code


@pytest.mark.parametrize(("change", "message"), [
    (edit_info(threshold=5.0), "threshold must be a probability strictly between 0 and 1, got 5.0"),
    (edit_info(input_size=[33, 33]), "input_size .33, 33. must be two positive multiples of 32"),
    (edit_info(class_names=["benign"]), "class_names .'benign'. must be two or more"),
    (edit_info(class_names=["x", "x"]), "must be two or more different names"),
    (edit_info(intensity="zscore"), "intensity normalisation 'zscore' is not supported"),
    (edit_info(training="lots"), "training 'lots' is not an object"),
    (edit_info(temperature=-1.0), "temperature -1.0 must be a positive number"),
    (edit_info(lesion_decision={"min_peak": 3}), "min_peak must be a number in"),
    (lambda metadata: metadata.update(info="{not json"), "'info' is not JSON"),
    (lambda metadata: metadata.pop("info"), "has no 'info'"),
    (lambda metadata: metadata.update(format_version="x"), "format_version 'x'"),
], ids=["threshold", "input_size", "one_class", "same_names", "intensity", "training", "temperature",
        "lesion_decision", "not_json", "no_info", "version"])
def test_every_metadata_field_is_checked_with_a_message_naming_the_file(model_path, tmp_path, change, message):
    bad = rewrite_header(model_path, tmp_path / "bad.safetensors", change)
    with pytest.raises(ModelFileError, match=f"^{re.escape(str(bad))}: .*{message}"):
        read_model_info(bad)
    assert predict(bad, tmp_path / "out", write_png(tmp_path / "x.png")) == 2  # before any input is tried
    assert not (tmp_path / "out" / "results.json").exists()


def test_an_unknown_backbone_is_refused_at_load_naming_the_file(model_path, tmp_path, capsys):
    def change(metadata):
        info = json.loads(metadata["info"])
        info["architecture"]["backbone"] = "vgg99"
        metadata["info"] = json.dumps(info)

    bad = rewrite_header(model_path, tmp_path / "vgg.safetensors", change)
    assert predict(bad, tmp_path / "out", write_png(tmp_path / "x.png")) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(bad) in error and "vgg99" in error


def test_a_format_1_file_with_a_weights_only_checksum_still_loads(model_path, tmp_path):
    def legacy(metadata):
        metadata["format_version"] = "1"

    with safe_open(str(model_path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    old = rewrite_header(model_path, tmp_path / "v1.safetensors", legacy, resign=False)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        read_model_info(old)
    old = rewrite_header(model_path, tmp_path / "v1.safetensors",
                         lambda m: (legacy(m), m.update(sha256=weights_checksum(tensors))), resign=False)
    assert read_model_info(old).class_names == ["benign", "malignant"]


def test_the_slicer_model_list_shows_a_bad_file_as_unusable(model_path, tmp_path):
    from MFFMTSlicerLib.models import ModelRegistry

    from MFFMTCore.base.model_metadata import read_model_metadata

    folder = tmp_path / "models"
    folder.mkdir()
    rewrite_header(model_path, folder / "no_info.safetensors", lambda metadata: metadata.pop("info"))
    rewrite_header(model_path, folder / "swapped.safetensors", edit_info(class_names=["malignant", "benign"]),
                   resign=False)
    rewrite_header(model_path, folder / "odd.safetensors", edit_info(architecture="resnet18", validation=[]))
    (folder / "good.safetensors").write_bytes(model_path.read_bytes())
    entries = {entry.path.name: entry for entry in ModelRegistry(folder).entries()}
    assert entries["good.safetensors"].error is None
    for name in ("no_info.safetensors", "odd.safetensors"):  # what the header alone shows
        assert entries[name].title().endswith("(unusable)")
        assert str(folder / name) in entries[name].error
    # The checksum is the worker's to verify when it loads the model (the list hashes no weights);
    # its verdict then marks the file.
    assert entries["swapped.safetensors"].error is None
    verdicts = {folder / "swapped.safetensors": f"{folder / 'swapped.safetensors'}: checksum mismatch"}
    swapped = {entry.path.name: entry for entry in ModelRegistry(folder, unusable=verdicts.get).entries()}
    assert swapped["swapped.safetensors"].title() == "swapped (unusable)"
    assert "checksum mismatch" in swapped["swapped.safetensors"].error
    # Without MFFMTCore (before torch is installed) the header is read directly, and still checked.
    with pytest.raises(ValueError, match="'architecture' is not a JSON object"):
        read_model_metadata(folder / "odd.safetensors")


# ------------------------------------------------------------------ the output folder


@pytest.mark.slow
def test_one_run_at_a_time_per_output_folder_with_a_stale_lock_taken_over(model_path, tmp_path):
    output = tmp_path / "out"
    image = write_png(tmp_path / "in" / "a.png")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom MFFMTCore.folder_lock import FolderLock\n"
         f"with FolderLock({str(output)!r}, 'mffmt predict'):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        command = [sys.executable, "-m", "MFFMTCore", "predict", str(image), "--output", str(output),
                   "--model", str(model_path), "--progress", "none", "--threads", "1"]
        second = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert second.returncode == 2
        assert f"in use by mffmt predict (process {holder.pid} " in second.stderr
        assert second.stderr.strip().count("\n") == 0 and not (output / "results.json").exists()
        holder.send_signal(signal.SIGKILL)  # the holder dies without removing its lock
        holder.wait(30)
        assert (output / LOCK_NAME).exists()
        third = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert third.returncode == 0, third.stderr  # the stale lock was taken over
        assert not (output / LOCK_NAME).exists()  # and released at the end
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_of_a_live_process_is_respected(tmp_path):
    with FolderLock(tmp_path, "mffmt train"):
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": os.uname().nodename, "command": "x",
                                                      "started": "now"}))
        with pytest.raises(FolderLockedError, match="process 1 "):
            FolderLock(tmp_path, "mffmt predict").acquire()


def test_a_rerun_skips_only_inputs_whose_content_model_and_settings_match(model_path, random_model, tmp_path):
    a, b = write_png(tmp_path / "in" / "a.png", seed=1), write_png(tmp_path / "in" / "b.png", seed=2)
    output = tmp_path / "out"
    assert predict(model_path, output, a, b) == 0
    first = strict_json(output / "results.json")
    overlay = (output / "b_overlay.png").stat().st_mtime_ns
    write_png(a, seed=3)  # a is replaced by another image under the same name
    assert predict(model_path, output, a, b) == 0
    second = strict_json(output / "results.json")
    assert second["rows"][0]["p_malignant"] != first["rows"][0]["p_malignant"]  # a was redone
    assert (output / "b_overlay.png").stat().st_mtime_ns == overlay  # b was skipped
    assert predict(model_path, output, a, b, extra=("--lesion-threshold", "0.3")) == 0  # other settings: redone
    assert (output / "b_overlay.png").stat().st_mtime_ns != overlay

    other = random_model(tmp_path / "other.safetensors", 5)
    overlay = (output / "b_overlay.png").stat().st_mtime_ns
    assert predict(other, output, b, extra=("--lesion-threshold", "0.3")) == 0  # another model: redone
    assert (output / "b_overlay.png").stat().st_mtime_ns != overlay


def test_overwrite_of_some_inputs_keeps_the_other_rows(model_path, tmp_path):
    a, b = write_png(tmp_path / "in" / "a.png", seed=1), write_png(tmp_path / "in" / "b.png", seed=2)
    output = tmp_path / "out"
    assert predict(model_path, output, a, b) == 0
    assert predict(model_path, output, a, extra=("--overwrite",)) == 0
    assert sorted(rows_of(output)) == ["a.png", "b.png"]
    assert {entry["status"] for entry in strict_json(output / "results.json")["inputs"]} == {"done"}


def test_a_file_predict_did_not_write_is_never_replaced(model_path, tmp_path):
    folder = tmp_path / "a"
    scan = write_png(folder / "scan.png")
    mine = folder / "scan_overlay.png"
    mine.write_bytes(b"the user's own picture")
    other = write_png(tmp_path / "b" / "other.png")
    assert predict(model_path, folder, scan, other) == 1
    assert mine.read_bytes() == b"the user's own picture"
    rows = rows_of(folder)
    assert str(mine) in rows["scan.png"][0]["error"] and "was not written by mffmt predict" in rows["scan.png"][0]["error"]
    assert rows["other.png"][0]["prediction"]
    assert predict(model_path, folder, scan, extra=("--overwrite",)) == 0  # told to: replaced
    assert mine.read_bytes() != b"the user's own picture"

    foreign_csv = tmp_path / "c" / "results.csv"
    foreign_csv.parent.mkdir()
    foreign_csv.write_text("someone else's table\n")
    assert predict(model_path, foreign_csv.parent, scan) == 2
    assert foreign_csv.read_text() == "someone else's table\n"


def test_usage_and_setup_errors_are_one_line_with_status_2_before_the_network_runs(model_path, tmp_path, capsys):
    image = write_png(tmp_path / "in" / "a.png")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    missing_model = tmp_path / "no-model.safetensors"  # not loaded: the output is checked first
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root ignores permissions; a read-only mount does not
        read_only = Path("/sys/mffmt-output")
    cases = {
        "file": (["predict", str(image), "--output", str(a_file), "--model", str(missing_model)], "is a file"),
        "read-only": (["predict", str(image), "--output", str(read_only), "--model", str(missing_model)],
                      "(Permission denied|Read-only file system|Operation not permitted)"),
        "input is output": (["predict", str(tmp_path / "in"), "--output", str(tmp_path / "in"),
                             "--model", str(missing_model)], "is the output folder"),
    }
    for name, (argv, message) in cases.items():
        assert main(argv) == 2, name
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0, (name, error)
        assert re.search(message, error), (name, error)
        assert "no-model" not in error, name


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs), to fill up; skips where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_a_message_and_the_previous_file_is_kept(small_disk, model_path, tmp_path, capsys):
    target = small_disk / "checkpoint.pt"
    checkpoint_module.save_checkpoint(target, {"epoch": 1})
    with pytest.raises(MFFMTError, match=f"^{re.escape(str(target))}: cannot be written"):
        checkpoint_module.save_checkpoint(target, {"epoch": 2, "big": torch.zeros(1 << 20)})
    assert checkpoint_module.load_checkpoint(target)["epoch"] == 1
    assert [path.name for path in small_disk.iterdir()] == ["checkpoint.pt"]

    network = MFFMT(backbone="resnet18")
    with pytest.raises(ModelFileError, match="model.safetensors: cannot be written .*(?i:no space left)"):
        save_model(small_disk / "model.safetensors", network, ModelInfo(architecture=network.architecture))
    assert [path.name for path in small_disk.iterdir()] == ["checkpoint.pt"]

    with pytest.raises(OSError), open(small_disk / "filler", "wb") as filler:
        filler.write(b"\0" * (1 << 20))  # fills what is left
        filler.flush()
    assert predict(model_path, small_disk / "out", write_png(tmp_path / "a.png")) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "No space left on device" in error


def test_leftover_temporary_files_are_removed_at_the_next_start(model_path, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    leftover = output / ".a_overlay.k3j_x9q2.tmp.png"
    leftover.write_bytes(b"half a picture")
    kept = output / ".notes.txt"
    kept.write_text("the user's")
    assert predict(model_path, output, write_png(tmp_path / "in" / "a.png")) == 0
    assert not leftover.exists() and kept.exists()


# ------------------------------------------------------------------ training


TINY = ["--input-size", "64", "--batch-size", "4", "--threads", "1", "--progress", "none", "--val-fraction", "0.25"]


def one_class_data(root: Path, label: str | None) -> Path:
    datalist = write_dataset(root, count=8)
    items = json.loads(datalist.read_text())["training"]
    for item in items:
        if label is None:
            item.pop("label")
        else:
            item["label"] = label
    datalist.write_text(json.dumps({"training": items}))
    return datalist


@pytest.mark.parametrize("label", ["benign", None], ids=["one_class", "no_labels"])
def test_training_refuses_data_without_two_classes_before_it_starts(tmp_path, capsys, label):
    datalist = one_class_data(tmp_path / "data", label)
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(datalist), "--output", str(run_dir), *TINY]) == 2
    error = capsys.readouterr().err
    assert "malignant image(s); at least 2 of each are needed" in error
    assert not any((run_dir / name).exists() for name in ("config.json", "split.json", "model.safetensors"))


def test_training_refuses_a_folder_holding_an_earlier_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("model.safetensors", "config.json", "split.json"):
        (run_dir / name).write_text(f"earlier {name}")
    datalist = write_dataset(tmp_path / "data", count=8)
    assert main(["train", "--data", str(datalist), "--output", str(run_dir), *TINY]) == 2
    assert "already holds a training run (model.safetensors, config.json, split.json)" in capsys.readouterr().err
    # --overwrite with unusable data refuses too, and the earlier run is still there.
    one_class = one_class_data(tmp_path / "one", "malignant")
    assert main(["train", "--data", str(one_class), "--output", str(run_dir), "--overwrite", *TINY]) == 2
    assert (run_dir / "model.safetensors").read_text() == "earlier model.safetensors"
    assert main(["train", "--data", str(datalist), "--output", str(run_dir / "config.json"), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_training_overwrite_replaces_the_earlier_run_and_removes_leftover_temporaries(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_text("earlier model")
    leftover = run_dir / ".checkpoint.a1b2c3d4.tmp.pt"
    leftover.write_bytes(b"\0" * 1024)
    datalist = write_dataset(tmp_path / "data", count=8)
    started = time.monotonic()
    assert main(["train", "--data", str(datalist), "--output", str(run_dir), "--overwrite", "--epochs", "1",
                 *TINY]) == 0
    assert time.monotonic() - started < 300
    assert not leftover.exists() and not (run_dir / LOCK_NAME).exists()
    assert read_model_info(run_dir / "model.safetensors").class_names == ["benign", "malignant"]
    strict_json(run_dir / "history.json")
    strict_json(run_dir / "split.json")
