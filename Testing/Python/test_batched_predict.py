"""`mffmt predict`'s batched path: frames of several inputs per network call, the same answers as one at a time.

The network's arithmetic differs in the last bits between batch sizes (oneDNN picks other kernels),
so "the same" is: every table cell that is not a number equal, every number equal to 1e-4 relative,
probability maps equal to 1e-5, and label maps equal except where the probability lies within 1e-5
of the threshold.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch
from PIL import Image

from MFFMTCore.base.results_schema import read_results_document
from MFFMTCore.cli import main
from MFFMTCore.inference import Predictor
from MFFMTCore.inference.batch import find_inputs, network_plan, predict_files


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, sample_frames) -> Path:
    """The sample frames (one of them in colour), a 5-frame clip of them, a corrupt file and a NaN frame."""
    folder = tmp_path_factory.mktemp("mixed")
    frames = []
    for number, path in enumerate(sample_frames):
        image = Image.open(path).convert("L")
        if number == 1:
            image = image.convert("RGB")
        image.save(folder / f"{number}_{path.name}")
        frames.append(np.asarray(image.convert("L").resize((200, 150))))
    clip = sitk.GetImageFromArray(np.stack(frames[:5]))
    clip.SetSpacing((0.1, 0.1, 1.0))
    sitk.WriteImage(clip, str(folder / "3_clip.nrrd"))
    (folder / "4_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    nan = np.full((64, 64), np.nan, dtype=np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(folder / "5_nan.nrrd"))
    return folder


def _rows(output: Path) -> list[dict[str, str]]:
    with (output / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _same_cell(first: str, second: str) -> bool:
    try:
        a, b = float(first), float(second)
    except ValueError:  # ITK's messages name an object's address, which differs from run to run
        return re.sub("0x[0-9a-f]+", "", first) == re.sub("0x[0-9a-f]+", "", second)
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def test_batched_run_gives_the_rows_and_files_of_one_frame_at_a_time(default_model, mixed_inputs, tmp_path):
    inputs = find_inputs([mixed_inputs])
    one, batched = tmp_path / "one", tmp_path / "batched"
    single = predict_files(Predictor(default_model, batch_size=1), inputs, one)
    several = predict_files(Predictor(default_model, batch_size=4), inputs, batched)

    assert [o.status for o in several.outcomes] == [o.status for o in single.outcomes]
    assert [o.status for o in several.outcomes].count("failed") == 2  # the corrupt file and the NaN frame
    assert sum(o.status == "done" for o in several.outcomes) == len(inputs) - 2
    rows_one, rows_batched = _rows(one), _rows(batched)
    assert len(rows_one) == len(rows_batched) == len(inputs) + 4  # a row per clip frame, an error row per failed input
    for row_one, row_batched in zip(rows_one, rows_batched):
        assert row_one.keys() == row_batched.keys()
        different = [key for key in row_one if not _same_cell(row_one[key], row_batched[key])]
        assert not different, (row_one["input"], row_one["frame"], different)

    threshold = read_results_document(one)["settings"]["threshold"]
    for outcome in single.outcomes:
        if outcome.status != "done":
            continue
        files = {name: batched / Path(path).name for name, path in outcome.outputs.items()}
        p_one = sitk.GetArrayFromImage(sitk.ReadImage(outcome.outputs["probability"]))
        p_batched = sitk.GetArrayFromImage(sitk.ReadImage(str(files["probability"])))
        np.testing.assert_allclose(p_batched, p_one, atol=1e-5)
        label_one = slicerio.read_segmentation(outcome.outputs["segmentation"])["voxels"]
        label_batched = slicerio.read_segmentation(str(files["segmentation"]))["voxels"]
        near = np.abs(p_one - threshold) < 1e-5  # (H, W) or (N, H, W); slicerio's voxels are (i, j, k)
        near = (near if near.ndim == 3 else near[None]).transpose(2, 1, 0)
        assert ((label_one == label_batched) | near).all()
        assert Image.open(files["overlay"]).size == Image.open(outcome.outputs["overlay"]).size


def test_cancel_leaves_only_recorded_inputs_and_a_rerun_finishes_the_rest(default_model, sample_frames, tmp_path):
    predictor = Predictor(default_model, batch_size=2)
    output = tmp_path / "out"
    calls = []

    def stop_at_second_call(name: str, done: int, total: int) -> None:
        calls.append(name)
        if len(calls) == 3:  # the second network call (two inputs in each)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, list(sample_frames), output, frames_progress=stop_at_second_call)
    document = read_results_document(output)
    recorded = {entry["stem"] for entry in document["inputs"]} if document else set()
    assert all(entry["status"] == "done" for entry in (document or {"inputs": []})["inputs"])
    left = {path.name for path in output.iterdir()} - {"results.csv", "results.json"}
    # Every file left belongs to a recorded input, whole (all three files); nothing half-written.
    assert {name.split(".")[0].removesuffix("_probability").removesuffix("_overlay") for name in left} == recorded
    assert len(left) == 3 * len(recorded)
    assert len(recorded) < len(sample_frames)

    summary = predict_files(predictor, list(sample_frames), output)
    assert sorted(o.status for o in summary.outcomes) == sorted(
        ["skipped"] * len(recorded) + ["done"] * (len(sample_frames) - len(recorded)))


def test_outputs_option_writes_only_the_files_asked_for(default_model, sample_frames, tmp_path, capsys):
    output = tmp_path / "out"
    frames = [str(path) for path in sample_frames[:2]]
    assert main(["predict", *frames, "--output", str(output), "--model", str(default_model), "--outputs", "seg",
                 "--progress", "none"]) == 0
    assert sorted(path.name for path in output.iterdir()) == sorted(
        ["results.csv", "results.json", *(f"{Path(frame).stem}.seg.nrrd" for frame in frames)])
    # Asking for more outputs redoes the inputs; asking for an unknown one is refused before any work.
    assert main(["predict", *frames, "--output", str(output), "--model", str(default_model), "--progress", "none"]) == 0
    assert len(list(output.glob("*_overlay.png"))) == 2
    with pytest.raises(SystemExit):
        main(["predict", *frames, "--output", str(output), "--outputs", "seg,movie"])
    assert "seg, probability, overlay, dicom" in capsys.readouterr().err


def test_reading_and_writing_get_a_core_of_the_threads_set_and_the_setting_comes_back(
        default_model, sample_frames, tmp_path):
    predictor = Predictor(default_model, batch_size=2)
    seen = []
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        predict_files(predictor, list(sample_frames[:3]), tmp_path / "several",
                      frames_progress=lambda name, done, total: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {1}  # the reader and writer threads have the other core
        assert torch.get_num_threads() == 2
        seen.clear()
        predict_files(predictor, list(sample_frames[:1]), tmp_path / "one",
                      frames_progress=lambda name, done, total: seen.append(torch.get_num_threads()))
        assert seen == [2]  # one input: nothing to overlap, the network has every thread
        torch.set_num_threads(1)
        seen.clear()
        predict_files(predictor, list(sample_frames[:3]), tmp_path / "single",
                      frames_progress=lambda name, done, total: seen.append(torch.get_num_threads()))
        assert set(seen) == {1}  # never fewer than one
    finally:
        torch.set_num_threads(previous)


def test_network_plan():
    assert network_plan(2, torch.device("cpu"), 100, gradcam=False) == (2, 1)  # 2 calls of one thread
    assert network_plan(8, torch.device("cpu"), 100, gradcam=False) == (4, 2)  # at most 4 calls at once
    assert network_plan(8, torch.device("cpu"), 1, gradcam=False) == (1, 8)  # nothing to overlap
    assert network_plan(8, torch.device("cpu"), 100, gradcam=True) == (1, 8)  # Grad-CAM's hooks are shared
    assert network_plan(8, torch.device("cuda"), 100, gradcam=False) == (1, 8)
