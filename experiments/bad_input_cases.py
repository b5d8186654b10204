"""Try MFFMTCore as a careless or hostile user would (issues 10 and 21) and print what each case gives.

Every case runs the real ``mffmt`` command line (``python -m MFFMTCore``) in a fresh folder, on small
synthetic files and a small random-weight model written by the MFFMTCore under test, and reports
the exit status, stderr (first line, or the last line of a traceback) and what happened to the
results. Run it once per code base and compare::

    PYTHONPATH=/path/to/old/checkout python experiments/bad_input_cases.py > before.md
    python experiments/bad_input_cases.py > after.md

The disk-full case mounts a small tmpfs and is skipped where that is not allowed (needs root).
Cases "R2 ..." are the second probe's (issue 21), numbered by the issue's items.

Round 2, before (67ef1c0) and after (issue 21's branch), ``python experiments/bad_input_cases.py R2``
(serve cases: exit time after its input closed; items 4, 6, 9, 12c-e are other branches' work):

| case | before | after |
|---|---|---|
| R2.1 serve: 400 KB of nested JSON, then info | HUNG (no exit 40 s after input closed) | error line; exit 0 in 0.1 s |
| R2.1 serve: "attachment": 10**12 | HUNG | error line; exit 0 in 0.1 s |
| R2.1 serve: frame shape [2**70, 1] | HUNG | error line, info answered; exit 0 in 0.1 s |
| R2.1 serve: frame shape [2**62, 4] | no reply at all; exit 0 | error line, info answered; exit 0 in 0.1 s |
| R2.1 serve: "id": 1e400 | no reply to it | error line (id null), info answered |
| R2.2 rerun after the .raw of an .mhd changed | OLD RESULT KEPT | redone |
| R2.3 SIGKILL between writing and recording, rerun | input refused for good ("exists and was not written by mffmt predict") | rerun replaces the leftovers; done |
| R2.5a one image under two spellings, split | 4 images on both sides | 0 |
| R2.5b evaluate, one entry listed twice | scored 5 of 4 distinct images, no note | 4 scored, one-line note |
| R2.7 875 KB PNG of 30000x30000 | > 5.7 GB, transform error (issue's figure; not rerun) | refused before decoding, one line; peak 0.65 GB |
| R2.7b an RLE DICOM clip, 400 frames of 1024x1024 (11.3 MB file; `mffmt predict`, peak of the child) | 4.51 / 4.54 / 4.52 GB peak, 111 / 76 / 77 s (the whole float32 probability map held, copied by SimpleITK, the label map copied by pynrrd) | 1.11 / 1.11 / 1.13 GB, 187 s with Python's zlib, 69 / 74 s with zlib-ng (the maps streamed to their files, the label kept compressed per frame; the 400 MiB of decoded frames are the input's); 400 rows in both |
| R2.8 a 250-character input name among others | exit 2, the batch stopped | both done (shortened stem with a hash) |
| R2.10 a colour frame flagged "not breast B-mode" | p_malignant 0.50, lesion_present True, 4096 px lesion | p_malignant empty, no lesion |
| R2.12a grey + alpha PNG | refused (Unknown PixelType) | read as its grey values |
| R2.12b .mhd naming /etc/passwd | answered from /etc/passwd's bytes | refused, one line |
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


# ------------------------------------------------------------------- round 2 (issue 21)

# Issue 21 item 12's option cases (R2.12c, R2.12d), before (67ef1c0) -> after:
# --output=: exit 0, the results written into the current folder -> exit 2, "--output: expected a file or
#         folder name, got ''", nothing written;
# --threads: exit 1, "libgomp: Out of memory allocating 800008 bytes" -> exit 2, "--threads: must be at most 8
#         (4 x the 2 cores this process may use), got 100000";
# --device: exit 1, traceback "AssertionError: Torch not compiled with CUDA enabled", output folder made ->
#         exit 2, "--device cuda: this computer has no NVIDIA GPU (CUDA) that torch can use; choose auto or
#         one of: cpu", no folder made.


def serve_replies(tmp: Path, payload: bytes, timeout: float = 40) -> str:
    """Start ``mffmt serve``, send ``payload`` then close its input: its replies and how it ended."""
    process = subprocess.Popen([sys.executable, "-m", "MFFMTCore", "serve", "--model", str(model(tmp / "m.safetensors")),
                                "--threads", "1"], cwd=tmp, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    ready = process.stdout.readline()
    if b'"ready"' not in ready:
        process.kill()
        return f"no ready line ({ready[:80]!r})"
    try:
        process.stdin.write(payload)
        process.stdin.close()
    except BrokenPipeError:
        pass
    closed = time.monotonic()
    try:
        status = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return f"HUNG: no exit {timeout:.0f} s after its input closed"
    events = [json.loads(line).get("event", "?") for line in process.stdout.read().splitlines() if line.strip()]
    return f"replies {events or 'NONE'}; exit {status} {time.monotonic() - closed:.1f} s after its input closed"


INFO = b'{"id": "after", "op": "info"}\n'
for title, payload in (
    ("400 KB of nested JSON", b'{"id":1,"op":"info","x":' + b"[" * 200000 + b"]" * 200000 + b"}\n"),
    ('"attachment": 10**12', b'{"id": 1, "op": "segment", "attachment": 1000000000000}\n'),
    ("frame shape [2**70, 1]", json.dumps({"id": 1, "op": "segment", "arrays": [
        {"name": "image", "dtype": "uint8", "shape": [2**70, 1]}]}).encode() + b"\n"),
    ("frame shape [2**62, 4] (bytes wrap to 0)", json.dumps({"id": 1, "op": "segment", "arrays": [
        {"name": "image", "dtype": "uint8", "shape": [2**62, 4]}]}).encode() + b"\n"),
    ('"id": 1e400', b'{"id": 1e400, "op": "info"}\n'),
):
    def serve_case(tmp: Path, payload=payload):
        return ("mffmt serve < (bad message, info request, end of input)", serve_replies(tmp, payload + INFO))
    case(f"R2.1 serve: {title}")(serve_case)


@case("R2.2 rerun after the .raw of an .mhd changed")
def detached_header(tmp: Path):
    weights = model(tmp / "m.safetensors")
    pixels = np.random.default_rng(1).integers(0, 255, (48, 64), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp / "scan.mhd"))
    mffmt("predict", "scan.mhd", "--output", "out", "--model", weights, *FAST, cwd=tmp)
    before = rows(tmp / "out")[0]["p_malignant"]
    (tmp / "scan.raw").write_bytes(np.random.default_rng(2).integers(0, 255, (48, 64), dtype=np.uint8).tobytes())
    result = mffmt("predict", "scan.mhd", "--output", "out", "--model", weights, *FAST, cwd=tmp)
    after = rows(tmp / "out")[0]["p_malignant"]
    return ("mffmt predict scan.mhd --output out; change scan.raw; rerun",
            f"{said(result)}; p_malignant {before} -> {after} ({'redone' if before != after else 'OLD RESULT KEPT'})")


@case("R2.3 SIGKILL between writing the files and recording them")
def killed_before_record(tmp: Path):
    weights = model(tmp / "m.safetensors")
    png(tmp / "a.png")
    code = ("import os, signal\nimport MFFMTCore.inference.batch as batch\n"
            "batch.write_results = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from MFFMTCore.cli import main\n"
            f"main(['predict', 'a.png', '--output', 'out', '--model', {str(weights)!r}, *{FAST!r}])\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, timeout=600)
    result = mffmt("predict", "a.png", "--output", "out", "--model", weights, *FAST, cwd=tmp)
    return ("kill -9 after a.png's files are written, before results.json; rerun",
            f"{said(result)}; {row_summary(tmp / 'out')}")


@case("R2.4 --dicom on a header without PatientID / StudyInstanceUID / SOPInstanceUID")
def dicom_without_uids(tmp: Path):
    import pydicom.data

    source = pydicom.data.get_testdata_file("ExplVR_BigEnd.dcm")
    png(tmp / "a.png")
    result = mffmt("predict", source, "a.png", "--dicom", "--output", "out", "--model", model(tmp / "m.safetensors"),
                   *FAST, cwd=tmp)
    return ("mffmt predict ExplVR_BigEnd.dcm a.png --dicom --output out", f"{said(result)}; {row_summary(tmp / 'out')}")


@case("R2.5a one image under two spellings in a training split")
def split_twice(tmp: Path):
    from MFFMTCore.data import read_datalist, split_by_group

    datalist = dataset(tmp / "data", ["benign", "malignant"] * 6)
    items = json.loads(datalist.read_text())["training"]
    again = [dict(item, image=f"../data/{item['image']}", group=f"other-{item['group']}") for item in items]
    (tmp / "data" / "again.json").write_text(json.dumps({"training": again}))
    records = read_datalist(datalist) + read_datalist(tmp / "data" / "again.json")
    train, val = split_by_group(records, 0.25, seed=0)
    real = lambda part: {os.path.realpath(record.image) for record in part}  # noqa: E731
    return ("split_by_group(datalist + the same images spelled ../data/x.png)",
            f"{len(real(train) & real(val))} images on both sides")


@case("R2.5b evaluate with an entry listed twice")
def evaluate_twice(tmp: Path):
    datalist = dataset(tmp / "data", ["benign", "malignant"] * 2)
    items = json.loads(datalist.read_text())["training"]
    datalist.write_text(json.dumps({"training": items + [dict(items[0], image=f"../data/{items[0]['image']}")]}))
    result = mffmt("evaluate", "--model", model(tmp / "m.safetensors"), "--data", datalist, "--output", "eval",
                   "--threads", "1", "--progress", "none", cwd=tmp)
    metrics = json.loads((tmp / "eval" / "metrics.json").read_text()) if (tmp / "eval" / "metrics.json").exists() else {}
    note = next((line for line in result.stderr.splitlines() if "duplicate" in line), "no note")
    return ("mffmt evaluate --data DATALIST_WITH_ONE_ENTRY_TWICE", f"exit {result.returncode}; scored "
            f"{metrics.get('samples')} of 4 distinct images; {note[:90]}")


@case("R2.7 an 875 KB PNG of 30000x30000 pixels")
def bomb(tmp: Path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * 30001  # every row: filter byte 0 and 30000 black pixels
    pixels = b"".join(packer.compress(row) for _ in range(30000)) + packer.flush()
    (tmp / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                                   + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return peak_predict(tmp, "bomb.png")


def peak_predict(tmp: Path, name: str) -> tuple[str, str]:
    """``mffmt predict NAME`` run from a small parent that reports its only child's peak memory (VmHWM's
    kin: ru_maxrss of the children)."""
    command = [sys.executable, "-m", "MFFMTCore", "predict", name, "--output", "out", "--model",
               str(model(tmp / "m.safetensors")), *FAST]
    code = ("import resource, subprocess, sys\n"
            f"result = subprocess.run({command!r}, capture_output=True, text=True)\n"
            "sys.stderr.write(result.stderr)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(result.returncode)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True, timeout=1800)
    peak = int(result.stdout.split()[-1]) / 2**20 if result.stdout.split() else float("nan")
    return (f"mffmt predict {name} ({(tmp / name).stat().st_size / 2**20:.1f} MB) --output out",
            f"{said(result)}; {len(rows(tmp / 'out'))} rows; peak memory {peak:.2f} GB; "
            f"{time.monotonic() - started:.0f} s")


@case("R2.7b an RLE DICOM clip of 400 frames of 1024x1024")
def rle_clip(tmp: Path):
    """Issue 21 item 7's clip: 400 MiB decoded, whose float32 probability map alone is 1.6 GiB. Its peak
    memory is measured as the R2.7 bomb's: ru_maxrss of ``mffmt predict``, from its parent."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_encoder
    from pydicom.uid import RLELossless, UltrasoundMultiFrameImageStorage, generate_uid

    # A scan of flat patches with a dark lesion that moves: a few KB a frame in RLE, 400 MiB decoded.
    encoder, frames = get_encoder(RLELossless), []
    for number in range(8):
        frame = np.zeros((1024, 1024), np.uint8)
        frame[100:900, 150:870] = np.add.outer(np.arange(800) // 40, np.arange(720) // 60) * 9 + 40 + number
        frame[400 + 10 * number : 520 + 10 * number, 400:560] = 20
        frames.append(encoder.encode(frame, rows=1024, columns=1024, samples_per_pixel=1, bits_allocated=8,
                                     bits_stored=8, photometric_interpretation="MONOCHROME2",
                                     pixel_representation=0, number_of_frames=1))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    meta.TransferSyntaxUID = RLELossless
    clip = Dataset()
    clip.file_meta = meta
    clip.SOPClassUID, clip.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    clip.StudyInstanceUID, clip.SeriesInstanceUID, clip.PatientID, clip.Modality = generate_uid(), generate_uid(), "P", "US"
    clip.Rows = clip.Columns = 1024
    clip.SamplesPerPixel, clip.PhotometricInterpretation = 1, "MONOCHROME2"
    clip.BitsAllocated = clip.BitsStored = 8
    clip.HighBit, clip.PixelRepresentation, clip.NumberOfFrames = 7, 0, 400
    clip.PixelData = encapsulate([frames[index % len(frames)] for index in range(400)])
    clip["PixelData"].VR = "OB"
    clip.save_as(tmp / "clip.dcm", enforce_file_format=True)
    return peak_predict(tmp, "clip.dcm")


@case("R2.8 an input name of 250 characters among others")
def long_name(tmp: Path):
    png(tmp / ("x" * 246 + ".png"))
    png(tmp / "b.png", seed=1)
    result = mffmt("predict", "x" * 246 + ".png", "b.png", "--output", "out", "--model", model(tmp / "m.safetensors"),
                   *FAST, cwd=tmp)
    return ("mffmt predict xxx...x.png (250 characters) b.png --output out", f"{said(result)}; {row_summary(tmp / 'out')}")


@case("R2.10 a colour frame (flagged: not breast B-mode)")
def black_frame(tmp: Path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp / "black.png")
    Image.fromarray(np.stack([np.full((64, 64), 200, np.uint8), np.zeros((64, 64), np.uint8),
                              np.full((64, 64), 60, np.uint8)], axis=-1)).save(tmp / "red.png")
    result = mffmt("predict", "red.png", "--output", "out", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    row = (rows(tmp / "out") or [{}])[0]
    return ("mffmt predict red.png (a colour frame) --output out",
            f"{said(result)}; prediction {row.get('prediction')!r}, p_malignant {row.get('p_malignant')!r}, "
            f"lesion_present {row.get('lesion_present')}, lesion_area_px {row.get('lesion_area_px')}")


@case("R2.12a a grey + alpha PNG")
def grey_alpha(tmp: Path):
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 2), dtype=np.uint8)
    Image.fromarray(pixels, "LA").save(tmp / "la.png")
    result = mffmt("predict", "la.png", "--output", "out", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict la.png --output out", f"{said(result)}; {row_summary(tmp / 'out')}")


@case("R2.12b an .mhd naming /etc/passwd as its pixels")
def mhd_passwd(tmp: Path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((48, 64), np.uint8)), str(tmp / "scan.mhd"))
    header = (tmp / "scan.mhd").read_text().replace("ElementDataFile = scan.raw", "ElementDataFile = /etc/passwd")
    (tmp / "scan.mhd").write_text(header.replace("DimSize = 64 48", "DimSize = 32 32"))
    result = mffmt("predict", "scan.mhd", "--output", "out", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict scan.mhd (ElementDataFile = /etc/passwd) --output out",
            f"{said(result)}; {row_summary(tmp / 'out')}")


@case("R2.12c --output= (empty)")
def empty_output(tmp: Path):
    png(tmp / "a.png")
    result = mffmt("predict", "a.png", "--output=", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict a.png --output=", f"{said(result)}; files written here: "
            f"{sorted(name for name in os.listdir(tmp) if name not in ('a.png', 'm.safetensors'))}")


@case("R2.12d --threads 100000 and --device cuda without CUDA")
def threads_device(tmp: Path):
    png(tmp / "a.png")
    weights = model(tmp / "m.safetensors")
    threads = mffmt("predict", "a.png", "--output", "out", "--model", weights, "--threads", "100000",
                    "--progress", "none", cwd=tmp)
    device = mffmt("predict", "a.png", "--output", "out2", "--model", weights, "--device", "cuda", *FAST, cwd=tmp)
    return ("mffmt predict a.png --threads 100000 | --device cuda", f"{said(threads)} | {said(device)}")


@case("R2.12e a truncated DICOM file")
def truncated_dicom(tmp: Path):
    import pydicom.data

    data = Path(pydicom.data.get_testdata_file("US1_UNCI.dcm") or pydicom.data.get_testdata_file("CT_small.dcm"))
    (tmp / "cut.dcm").write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = mffmt("predict", "cut.dcm", "--output", "out", "--model", model(tmp / "m.safetensors"), *FAST, cwd=tmp)
    return ("mffmt predict cut.dcm (first half of a DICOM file) --output out", f"{said(result)}; {row_summary(tmp / 'out')}")


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
