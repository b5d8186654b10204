"""The Slicer module's process model against the real ``mffmt`` commands, without Slicer.

What MFFMTSlicerLogic does around the network, step by step and with the same helpers: write a
volume as Slicer hands it out, run ``python -m MFFMTCore predict|train`` as a background process,
follow its progress, read the results back and check that they line up with the input voxel for
voxel; add a trained model to a models folder; stop a training run with its stop file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from MFFMTSlicerLib import commands, models, progress, results, scene_data
from MFFMTSlicerLib.process import BackgroundProcess
from MFFMTSlicerLib.volumes import write_volume

from MFFMTCore.base.progress_events import parse_event_line
from MFFMTCore.base.results_schema import document_rows, finished_outputs, read_results_document

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TIMEOUT_S = 600


def _run(args: list[str], until=None) -> tuple[BackgroundProcess, list[dict]]:
    """Run a command as the Slicer logic does; its JSON events on stdout; ``until`` may act on them."""
    environment = commands.child_environment({**os.environ, "OMP_NUM_THREADS": "1"}, REPO)
    process = BackgroundProcess(args, env=environment, cwd=str(REPO))
    process.start()
    events, deadline = [], time.monotonic() + TIMEOUT_S
    while not process.is_finished():
        assert time.monotonic() < deadline, f"timed out: {process.tail()}"
        events += [e for e in map(parse_event_line, process.read_lines()) if e]
        if until is not None:
            until(events)
        time.sleep(0.1)
    events += [e for e in map(parse_event_line, process.read_lines()) if e]
    return process, events


def test_predict_on_a_volume_written_like_slicer_does(tmp_path, model_path):
    # A 2D frame as Slicer holds a PNG: one slice, IJK-to-RAS flipping i and j, here with 0.2 mm pixels.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 80, (1, 48, 72)).astype(np.uint8)
    image[0, 15:30, 20:45] += 150
    ijk_to_ras = np.diag([-0.2, -0.2, 1.0, 1.0])
    ijk_to_ras[:3, 3] = [30.0, 12.0, 0.0]
    input_path = write_volume(image, ijk_to_ras, tmp_path / "input.nrrd")
    output = tmp_path / "output"
    args = [sys.executable, "-m", "MFFMTCore", "predict", "--output", str(output), "--model", str(model_path),
            "--lesion-threshold", "0.5", "--gradcam", "--roi", "10,5,50,40", "--progress", "json", "--", str(input_path)]
    process, events = _run(args)
    assert process.returncode == 0, process.tail()

    state = progress.PredictProgress()
    for event in events:
        state.update(event)
    assert [e["event"] for e in events] == ["start", "progress", "done"] and state.finished and state.fraction == 1.0

    document = read_results_document(output, required=True)
    rows = document_rows(document)
    assert len(rows) == 1 and rows[0]["input"] == str(input_path.absolute()) and rows[0]["frame"] == 0
    row = rows[0]
    assert row["prediction"] in ("benign", "malignant") and not row["error"]
    assert row["p_benign"] + row["p_malignant"] == pytest.approx(1.0, abs=1e-4)
    files = finished_outputs(document)[str(input_path.absolute())]
    assert {"segmentation", "probability", "gradcam"} <= set(files) and all(f.is_file() for f in files.values())

    # Every output lies on the input's voxels: same size, spacing, origin and direction.
    written = sitk.ReadImage(str(input_path))
    for name in ("segmentation", "probability", "gradcam"):
        out = sitk.ReadImage(str(files[name]))
        assert out.GetSize() == written.GetSize(), name
        assert out.GetSpacing() == pytest.approx(written.GetSpacing()), name
        assert out.GetOrigin() == pytest.approx(written.GetOrigin()), name
        assert out.GetDirection() == pytest.approx(written.GetDirection()), name

    # Re-thresholding in Slicer reproduces the command's own measurements at the same threshold.
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(files["probability"])))
    measured = results.frame_measurements(probability, 0.5, ijk_to_ras)[0]
    assert measured["lesion_area_px"] == row["lesion_area_px"]
    assert measured["lesion_area_mm2"] == pytest.approx(row["lesion_area_mm2"], abs=1e-3)
    assert measured["components"] == row["components"]
    if row["lesion_area_px"] > 0:
        for axis in "xyz":
            assert measured[f"centroid_{axis}"] == pytest.approx(row[f"centroid_{axis}"], abs=1e-3)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(files["segmentation"])))
    assert int((label != 0).sum()) == row["lesion_area_px"]
    table = {c.title: c.values for c in results.results_table(rows)}
    assert table["P(malignant)"] == [row["p_malignant"]]


def test_predict_reports_an_unreadable_input_in_its_row(tmp_path, model_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    output = tmp_path / "output"
    process, events = _run([sys.executable, "-m", "MFFMTCore", "predict", "--output", str(output), "--model",
                            str(model_path), "--progress", "json", "--", str(bad)])
    assert process.returncode == 1
    assert [event["event"] for event in events] == ["start", "progress", "done"]
    assert events[1]["status"] == "failed" and "broken.png" in events[1]["message"]
    state = progress.PredictProgress()
    for event in events:
        state.update(event)
    assert state.finished and state.error is None and "broken.png" in state.failures[str(bad)]
    rows = document_rows(read_results_document(output, required=True))
    assert "broken.png" in rows[0]["error"] and results.lesion_label(rows[0]).startswith("Error:")


def _training_data(tmp_path: Path) -> list[Path]:
    """The bundled BUS-BRA samples plus two scene volumes exported as the Retrain tab does."""
    from MFFMTCore.resources import sample_datalist

    samples = sample_datalist()
    assert samples.is_file(), f"{samples}: the bundled sample images are missing (MFFMTCore ships them)"
    rng = np.random.default_rng(2)
    scene = []
    for name, label in (("scene benign", "benign"), ("scene malignant", "malignant")):
        image = rng.integers(0, 255, (1, 64, 80)).astype(np.uint8)
        mask = np.zeros((1, 64, 80), np.uint8)
        mask[0, 20:40, 25:50] = 1
        scene.append(scene_data.SceneVolume(name, image, np.diag([-0.1, -0.1, 1.0, 1.0]), label, mask))
    export = scene_data.write_training_datalist(scene, tmp_path / "scene_data")
    return [samples, export.datalist]


def test_train_one_epoch_and_add_the_model_to_a_models_folder(tmp_path, model_path):
    run = tmp_path / "runs" / "first"
    args = commands.train_command(sys.executable, _training_data(tmp_path), run, backbone="resnet18", epochs=1,
                                  batch_size=2, val_fraction=0.34, input_size=64, lr=1e-3,
                                  stop_file=run / "STOP", device="CPU", progress="none") + ["--threads", "1"]
    tail, state = progress.JsonlTail(run / "progress.jsonl"), progress.TrainingState()

    def follow(_events):
        for event in tail.read_events():
            state.update(event)

    process, _ = _run(args, until=follow)
    follow(None)
    assert process.returncode == 0, process.tail()
    assert state.status == "done" and state.finished and state.fraction == 1.0, state.summary()
    assert [r.epoch for r in state.history] == [1] and math.isfinite(state.history[0].loss)
    assert tail.bad_lines == 0

    registry = models.ModelRegistry(tmp_path / "models", default_model=model_path)
    default_before = model_path.read_bytes()
    added = registry.add(run / "model.safetensors", "my retrained model")
    assert added.name == "my_retrained_model.safetensors"
    entries = registry.entries()
    assert [e.path for e in entries] == [model_path, added] and entries[1].error is None
    assert entries[1].info["input_size"] == [64, 64] and entries[1].backbone == "resnet18"
    assert model_path.read_bytes() == default_before  # the default model is only ever read


def test_train_stops_at_a_safe_point_when_the_stop_file_appears(tmp_path):
    run = tmp_path / "runs" / "stopped"
    stop = run / "STOP"
    args = commands.train_command(sys.executable, _training_data(tmp_path), run, epochs=50, batch_size=2,
                                  val_fraction=0.34, input_size=64, stop_file=stop, device="cpu",
                                  progress="none") + ["--threads", "1"]
    tail, state = progress.JsonlTail(run / "progress.jsonl"), progress.TrainingState()

    def stop_after_first_step(_events):
        for event in tail.read_events():
            state.update(event)
        if state.step >= 1 and not stop.exists():
            stop.touch()  # what Cancel in the Retrain tab does

    process, _ = _run(args, until=stop_after_first_step)
    for event in tail.read_events():
        state.update(event)
    assert process.returncode == 0, process.tail()
    assert state.status == "cancelled" and state.finished and len(state.history) < 50
    assert "Cancelled" in state.summary()
    lines = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "cancelled"
