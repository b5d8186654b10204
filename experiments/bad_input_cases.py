"""Try MFFMTCore as a careless or hostile user would (issue 10) and print what each case gives.

Every case runs the real ``mffmt`` command line (``python -m MFFMTCore``) in a fresh folder, on small
synthetic files and a small random-weight model written by the MFFMTCore under test, and reports
the exit status, stderr (first line, or the last line of a traceback) and what happened to the
results. Run it once per code base and compare::

    PYTHONPATH=/path/to/old/checkout python experiments/bad_input_cases.py > before.md
    python experiments/bad_input_cases.py > after.md

The disk-full case mounts a small tmpfs and is skipped where that is not allowed (needs root).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import MFFMTCore
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.model_file import ModelInfo, save_model
from MFFMTCore.network import MFFMT

CASES: list[tuple[str, Callable[[Path], tuple[str, str]]]] = []
FAST = ["--progress", "none", "--threads", "1"]
TINY = ["--input-size", "64", "--batch-size", "4", "--threads", "1", "--progress", "none", "--val-fraction", "0.25"]


def case(title: str):
    def register(function):
        CASES.append((title, function))
        return function
    return register


def mffmt(*args: str | Path, cwd: Path, wait: bool = True, timeout: float = 600):
    command = [sys.executable, "-m", "MFFMTCore", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def said(result) -> str:
    """Exit status and the gist of stderr."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line]
    if any(line.startswith("Traceback") for line in lines):
        gist = "TRACEBACK " + lines[-1]
    else:
        gist = next((line for line in lines if "error" in line or "failed" in line), lines[0] if lines else "")
    return f"exit {result.returncode}; {gist[:160]}"


def png(path: Path, shape=(48, 64), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def model(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    network = MFFMT(backbone="resnet18")
    return save_model(path, network, ModelInfo(architecture=network.architecture, input_size=[64, 64]))


def rows(output: Path) -> list[dict[str, str]]:
    if not (output / "results.csv").exists():
        return []
    with open(output / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def strict(path: Path) -> str:
    if not path.exists():
        return "no file"
    try:
        json.loads(path.read_text(), parse_constant=lambda token: (_ for _ in ()).throw(ValueError(token)))
    except ValueError as error:
        return f"NOT strict JSON ({error})"
    return "strict JSON"


def row_summary(output: Path) -> str:
    return "; ".join(f"{Path(r['input']).name}: " + (f"error '{r['error'][-70:]}'" if r["error"] else
                     f"{r['prediction']} p_malignant={r.get('p_malignant')}") for r in rows(output))


def dataset(root: Path, labels: list[str | None], size: int = 72) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for index, label in enumerate(labels):
        name = f"case{index:03d}"
        image = np.random.default_rng(index).normal(100, 20, (size, size)).clip(0, 255)
        image[20:40, 20:40] = 30 if label == "benign" else 210
        mask = np.zeros((size, size), np.uint8)
        mask[20:40, 20:40] = 255
        Image.fromarray(image.astype(np.uint8)).save(root / f"{name}.png")
        Image.fromarray(mask).save(root / f"{name}_mask.png")
        item = {"image": f"{name}.png", "mask": f"{name}_mask.png", "group": f"g{index}"}
        if label is not None:
            item["label"] = label
        items.append(item)
    (root / "datalist.json").write_text(json.dumps({"training": items}))
    return root / "datalist.json"


def edited_model(folder: Path, change) -> Path:
    """A copy of a model file with its header edited by hand (the checksum left as it was)."""
    source = model(folder / "source_model.safetensors")
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    change(metadata)
    save_file(tensors, str(folder / "edited.safetensors"), metadata=metadata)
    return folder / "edited.safetensors"


def info_edit(**changes):
    def change(metadata):
        info = json.loads(metadata["info"])
        info.update(changes)
        metadata["info"] = json.dumps(info)
    return change


# ---------------------------------------------------------------------------------------- cases


@case("1. one NaN voxel")
def nan_voxel(tmp: Path):
    pixels = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    pixels[5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp / "nan.nrrd"))
    result = mffmt("predict", "nan.nrrd", "--output", "out", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict nan.nrrd --output out",
            f"{said(result)}; {row_summary(tmp / 'out')}; results.json: {strict(tmp / 'out' / 'results.json')}")


@case("1b. evaluate with a NaN image")
def nan_evaluate(tmp: Path):
    datalist = dataset(tmp / "data", ["benign", "malignant"] * 2)
    pixels = np.full((72, 72), 100, np.float32)
    pixels[5, 5] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp / "data" / "inf.nrrd"))
    items = json.loads(datalist.read_text())["training"] + [{"image": "inf.nrrd", "label": "malignant"}]
    datalist.write_text(json.dumps({"training": items}))
    result = mffmt("evaluate", "--model", model(tmp / "m.safetensors"), "--data", datalist, "--output", "eval",
                   "--threads", "1", "--progress", "none", cwd=tmp)
    metrics = json.loads((tmp / "eval" / "metrics.json").read_text()) if (tmp / "eval" / "metrics.json").exists() else {}
    return ("mffmt evaluate --data DATA_WITH_INF_IMAGE --output eval",
            f"{said(result)}; scored {metrics.get('samples')} images, listed as failed: {len(metrics.get('failed', []))}")


for number, (title, change) in enumerate([
    ("class_names swapped", info_edit(class_names=["malignant", "benign"])),
    ("threshold 5.0", info_edit(threshold=5.0)),
    ("input_size 33", info_edit(input_size=[33, 33])),
    ("one class name", info_edit(class_names=["benign"])),
    ("non-JSON info", lambda metadata: metadata.update(info="{not json")),
    ("no info", lambda metadata: metadata.pop("info")),
    ("unknown backbone", lambda metadata: metadata.update(info=metadata["info"].replace('"resnet18"', '"vgg99"'))),
]):
    def header_case(tmp: Path, change=change, title=title):
        edited = edited_model(tmp, change)
        png(tmp / "a.png")
        result = mffmt("predict", "a.png", "--output", "out", "--model", edited, *FAST, cwd=tmp)
        return (f"edit the model header ({title}); mffmt predict a.png --model edited.safetensors",
                f"{said(result)}; {row_summary(tmp / 'out')}")
    case(f"2.{number + 1} model header: {title}")(header_case)


@case("2.8 model header: threshold 5.0, checksum recomputed")
def resigned(tmp: Path):
    from MFFMTCore import model_file

    def change(metadata):
        info_edit(threshold=5.0)(metadata)
        if hasattr(model_file, "model_checksum"):  # format 2: the checksum covers the header
            with safe_open(str(tmp / "source_model.safetensors"), framework="pt") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata["sha256"] = model_file.model_checksum(tensors, metadata)

    edited = edited_model(tmp, change)
    png(tmp / "a.png")
    result = mffmt("predict", "a.png", "--output", "out", "--model", edited, *FAST, cwd=tmp)
    return ("edit threshold to 5.0 and recompute the checksum; mffmt predict a.png --model edited.safetensors",
            f"{said(result)}; {row_summary(tmp / 'out')}")


@case("3. two predict runs into one folder at once")
def concurrent(tmp: Path):
    weights = model(tmp / "m.safetensors")
    for side, seed in (("x", 1), ("y", 2)):
        for index in range(3):
            png(tmp / side / f"scan{index}.png", seed=seed * 10 + index)
    first = mffmt("predict", "x", "--output", "out", "--model", weights, *FAST, cwd=tmp, wait=False)
    second = mffmt("predict", "y", "--output", "out", "--model", weights, *FAST, cwd=tmp, wait=False)
    results = []
    for process in (first, second):
        _, error = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, "", error))
    document = json.loads((tmp / "out" / "results.json").read_text())
    return ("mffmt predict x --output out & mffmt predict y --output out (same file names)",
            f"run 1: {said(results[0])} | run 2: {said(results[1])}; results rows {len(rows(tmp / 'out'))} of 6, "
            f"inputs in results.json {len(document['inputs'])}")


@case("4. rerun after an input was replaced by another image")
def replaced(tmp: Path):
    weights = model(tmp / "m.safetensors")
    png(tmp / "a.png", seed=1)
    mffmt("predict", "a.png", "--output", "out", "--model", weights, *FAST, cwd=tmp)
    before = rows(tmp / "out")[0]["p_malignant"]
    png(tmp / "a.png", seed=2)
    result = mffmt("predict", "a.png", "--output", "out", "--model", weights, *FAST, cwd=tmp)
    after = rows(tmp / "out")[0]["p_malignant"]
    return ("mffmt predict a.png --output out; replace a.png; rerun",
            f"{said(result)}; p_malignant {before} -> {after} ({'redone' if before != after else 'OLD RESULT KEPT'})")


@case("4b. --overwrite of one input")
def overwrite_one(tmp: Path):
    weights = model(tmp / "m.safetensors")
    png(tmp / "a.png", seed=1)
    png(tmp / "b.png", seed=2)
    mffmt("predict", "a.png", "b.png", "--output", "out", "--model", weights, *FAST, cwd=tmp)
    result = mffmt("predict", "a.png", "--output", "out", "--model", weights, "--overwrite", *FAST, cwd=tmp)
    return ("mffmt predict a.png b.png --output out; mffmt predict a.png --output out --overwrite",
            f"{said(result)}; rows left: {sorted(Path(r['input']).name for r in rows(tmp / 'out'))}")


@case("5. train --output holding an earlier run without checkpoint")
def train_earlier(tmp: Path):
    run = RunFolder(tmp / "run")
    run.path.mkdir()
    earlier = (run.model, run.config, run.split)
    for path in earlier:
        path.write_text("earlier run")
    datalist = dataset(tmp / "data", ["benign", "malignant"] * 4)
    result = mffmt("train", "--data", datalist, "--output", run.path, "--epochs", "1", *TINY, cwd=tmp)
    kept = [path.name for path in earlier if path.read_bytes() == b"earlier run"]
    return (f"mffmt train --data DATA --output RUN (RUN holds {', '.join(path.name for path in earlier)})",
            f"{said(result)}; earlier files intact: {kept or 'none'}")


@case("5b. predict a/scan.png --output a with the user's a/scan_overlay.png")
def foreign_file(tmp: Path):
    png(tmp / "a" / "scan.png")
    (tmp / "a" / "scan_overlay.png").write_bytes(b"mine")
    result = mffmt("predict", "a/scan.png", "--output", "a", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    kept = (tmp / "a" / "scan_overlay.png").read_bytes() == b"mine"
    return ("mffmt predict a/scan.png --output a", f"{said(result)}; user's scan_overlay.png "
            f"{'kept' if kept else 'OVERWRITTEN'}")


@case("5c. output folder = input folder")
def input_is_output(tmp: Path):
    png(tmp / "a" / "scan.png")
    result = mffmt("predict", "a", "--output", "a", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict a --output a", said(result))


@case("6a. --output names a file")
def output_file(tmp: Path):
    png(tmp / "a.png")
    (tmp / "notes.txt").write_text("x")
    result = mffmt("predict", "a.png", "--output", "notes.txt", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict a.png --output notes.txt", said(result))


@case("6b. read-only output folder")
def read_only(tmp: Path):
    png(tmp / "a.png")
    started = time.monotonic()
    result = mffmt("predict", "a.png", "--output", "/sys/mffmt-out", "--model", model(tmp / "m.safetensors"),
                   *FAST, cwd=tmp)
    ran = "network ran first" if "Traceback" in result.stderr and "write" in result.stderr.lower() else ""
    return ("mffmt predict a.png --output /sys/mffmt-out (read-only file system)",
            f"{said(result)} {ran} ({time.monotonic() - started:.1f} s)")


@case("6c. disk full while training")
def disk_full(tmp: Path):
    disk = tmp / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        return ("(skipped: cannot mount)", "")
    try:
        datalist = dataset(tmp / "data", ["benign", "malignant"] * 4)
        result = mffmt("train", "--data", datalist, "--output", disk / "run", "--epochs", "1", *TINY, cwd=tmp)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    return ("mffmt train --data DATA --output RUN_ON_A_2_MIB_DISK --epochs 1", said(result))


@case("6d. a symbolic-link loop among the inputs")
def link_loop(tmp: Path):
    os.symlink(tmp / "loop.png", tmp / "loop.png")
    png(tmp / "a.png")
    result = mffmt("predict", "loop.png", "a.png", "--output", "out", "--model", model(tmp / "m.safetensors"),
                   *FAST, cwd=tmp)
    return ("mffmt predict loop.png a.png --output out", f"{said(result)}; {row_summary(tmp / 'out')}")


@case("7a. a 1x1 image")
def tiny_image(tmp: Path):
    png(tmp / "dot.png", shape=(1, 1))
    result = mffmt("predict", "dot.png", "--output", "out", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict dot.png --output out", f"{said(result)}; {row_summary(tmp / 'out')}")


@case("7b. a 1x1 ROI")
def tiny_roi(tmp: Path):
    png(tmp / "a.png")
    result = mffmt("predict", "a.png", "--output", "out", "--roi", "5,5,1,1", "--model", model(tmp / "m.safetensors"),
                   *FAST, cwd=tmp)
    return ("mffmt predict a.png --roi 5,5,1,1 --output out", f"{said(result)}; {row_summary(tmp / 'out')}")


for title, labels in (("one class", ["benign"] * 8), ("no class labels", [None] * 8)):
    def one_class(tmp: Path, labels=labels, title=title):
        datalist = dataset(tmp / "data", labels)
        started = time.monotonic()
        result = mffmt("train", "--data", datalist, "--output", "run", "--epochs", "1", *TINY, cwd=tmp)
        shipped = "model shipped" if RunFolder(tmp / "run").model.exists() else "no model"
        return (f"mffmt train --data DATA({title}) --output run --epochs 1",
                f"{said(result)}; {shipped}; {time.monotonic() - started:.0f} s")
    case(f"7c. training data with {title}")(one_class)


@case("8. temporary file left by a kill during a save")
def leftover(tmp: Path):
    datalist = dataset(tmp / "data", ["benign", "malignant"] * 4)
    run = tmp / "run"
    process = mffmt("train", "--data", datalist, "--output", run, "--epochs", "1", *TINY, cwd=tmp, wait=False)
    process.wait(600)
    left = run / ".checkpoint.a1b2c3d4.tmp.pt"  # what a kill -9 inside torch.save leaves
    left.write_bytes(b"\0" * 4096)
    process = mffmt("train", "--output", run, "--resume", "--epochs", "2", "--progress", "none", cwd=tmp, wait=False)
    process.communicate(timeout=600)
    result = subprocess.CompletedProcess(process.args, process.returncode, "", "")
    return ("kill during a save (leftover .checkpoint.*.tmp.pt); mffmt train --output RUN --resume --epochs 2",
            f"exit {result.returncode}; leftover {'STILL THERE' if left.exists() else 'removed'}")


# Issue 21 item 12, before (67ef1c0) -> after (branch i20b), `python experiments/bad_input_cases.py 21.12`:
# 21.12a: exit 0, the results written into the current folder -> exit 2, "--output: expected a file or
#         folder name, got ''", nothing written;
# 21.12b: exit 1, "libgomp: Out of memory allocating 800008 bytes" -> exit 2, "--threads: must be at most 8
#         (4 x the 2 cores this process may use), got 100000";
# 21.12c: exit 1, traceback "AssertionError: Torch not compiled with CUDA enabled", output folder made ->
#         exit 2, "--device cuda: this computer has no NVIDIA GPU (CUDA) that torch can use; choose auto or
#         one of: cpu", no folder made.


@case("21.12a. --output= (empty)")
def empty_output(tmp: Path):
    png(tmp / "in" / "a.png")
    (tmp / "run").mkdir()
    result = mffmt("predict", tmp / "in" / "a.png", "--output=", "--model", model(tmp / "m.safetensors"), *FAST,
                   cwd=tmp / "run")
    written = sorted(path.name for path in (tmp / "run").iterdir())
    return ("mffmt predict a.png --output=", f"{said(result)}; written into the current folder: {written or 'nothing'}")


@case("21.12b. --threads 100000")
def absurd_threads(tmp: Path):
    png(tmp / "a.png")
    try:
        result = mffmt("predict", "a.png", "--output", "out", "--model", model(tmp / "m.safetensors"),
                       "--progress", "none", "--threads", "100000", cwd=tmp, timeout=120)
    except subprocess.TimeoutExpired:
        return ("mffmt predict a.png --output out --threads 100000", "NO ANSWER within 120 s")
    return ("mffmt predict a.png --output out --threads 100000", said(result))


@case("21.12c. --device cuda / mps where absent")
def absent_device(tmp: Path):
    png(tmp / "a.png")
    absent = "mps" if torch.cuda.is_available() else "cuda"
    result = mffmt("predict", "a.png", "--output", "out", "--model", model(tmp / "m.safetensors"), *FAST,
                   "--device", absent, cwd=tmp)
    return (f"mffmt predict a.png --output out --device {absent}",
            f"{said(result)}; output folder {'made' if (tmp / 'out').exists() else 'not made'}")


def main() -> int:
    only = set(sys.argv[1:])
    print(f"MFFMTCore from {Path(MFFMTCore.__file__).parent}", file=sys.stderr)
    print("| case | command | result |\n|---|---|---|")
    for title, function in CASES:
        if only and not any(title.startswith(prefix) for prefix in only):
            continue
        with tempfile.TemporaryDirectory() as folder:
            started = time.monotonic()
            try:
                command, result = function(Path(folder))
            except Exception as error:  # a case that breaks the harness is reported, not hidden
                command, result = "?", f"HARNESS ERROR {type(error).__name__}: {error}"
            print(f"| {title} | `{command}` | {result} |", flush=True)
            print(f"{title}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
