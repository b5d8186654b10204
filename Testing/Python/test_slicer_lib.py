"""Unit tests of the Slicer-free helpers of the MFFMTSlicer module (MFFMTSlicerLib).

They run without Slicer: command lines, progress parsing, results to table rows, geometry, the
lesion terminology, scene data to a training datalist and the first-use dependency check.
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from MFFMTSlicerLib import (
    commands,
    dependencies,
    progress,
    results,
    scene_data,
    volumes,
)

from MFFMTCore.base import geometry, terminology
from MFFMTCore.base.progress_events import parse_event_line
from MFFMTCore.base.requirements import REQUIREMENTS, Requirement
from MFFMTCore.base.roi import PhysicalBox, resolve_roi
from MFFMTCore.cli import build_parser
from MFFMTCore.data.readers import read_datalist

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extras install tomli (tomllib's origin) on Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]

# The naming rule of MFFMTSlicerLib: a module whose name does not start with slicer_ needs no Slicer.
PURE_MODULES = tuple(sorted(path.stem for path in (REPO / "MFFMTSlicer" / "MFFMTSlicerLib").glob("*.py")
                            if not path.stem.startswith(("slicer_", "__"))))


def test_pure_modules_import_without_slicer_qt_vtk_or_ctk():
    assert {"commands", "tasks", "worker", "volumes"} <= set(PURE_MODULES)
    # A fresh interpreter in which importing Slicer's modules fails, as outside Slicer.
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"slicer", "vtk", "vtkmodules", "qt", "ctk"}}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(REPO / "MFFMTSlicer")!r})
for module in {PURE_MODULES!r}:
    importlib.import_module("MFFMTSlicerLib." + module)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------- commands


def test_predict_request_has_every_field_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fields = commands.predict_request(["-scan.png", tmp_path / "b.png"], "-out", lesion_threshold=0.35,
                                      roi=(10, 20, 30, 40), gradcam=True, overwrite=False)
    assert fields == {"inputs": [str(tmp_path / "-scan.png"), str(tmp_path / "b.png")], "output": str(tmp_path / "-out"),
                      "threshold": 0.35, "roi": [10, 20, 30, 40], "gradcam": True, "overwrite": False}
    # Left to the worker's model when not given.
    assert set(commands.predict_request(["x.png"], "out")) == {"inputs", "output", "gradcam", "overwrite"}


def test_train_command_paths_are_absolute_and_data_is_one_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = commands.train_command("python", ["-data"], "run", init_model="m.safetensors", stop_file="STOP")
    assert f"--data={tmp_path / '-data'}" in args
    for flag, name in (("--output", "run"), ("--init-model", "m.safetensors"), ("--stop-file", "STOP")):
        assert args[args.index(flag) + 1] == str(tmp_path / name)


@pytest.mark.parametrize("kwargs, message", [
    ({"lesion_threshold": 1.0}, "threshold"), ({"lesion_threshold": 0.0}, "threshold"), ({"roi": (1, 2, 0, 4)}, "ROI"),
    ({"roi": (-1, 2, 3, 4)}, "ROI"),
])
def test_predict_request_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        commands.predict_request(["x.png"], "out", **kwargs)


def test_predict_request_needs_inputs():
    with pytest.raises(ValueError, match="no input"):
        commands.predict_request([], "out")


def test_train_command_has_every_option(tmp_path):
    args = commands.train_command("python", [tmp_path / "busi", tmp_path / "list.json"], tmp_path / "run",
                                  backbone="resnet50", epochs=3, lr=1e-5, lambda_loc=0.1, batch_size=8,
                                  val_fraction=0.25, input_size=64, init_model=tmp_path / "m.safetensors",
                                  device="CPU", stop_file=tmp_path / "run" / "STOP", seed=7)
    assert args[:4] == ["python", "-m", "MFFMTCore", "train"]
    assert [a.removeprefix("--data=") for a in args if a.startswith("--data=")] == [str(tmp_path / "busi"),
                                                                                     str(tmp_path / "list.json")]
    pairs = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    assert pairs["--output"] == str(tmp_path / "run") and pairs["--device"] == "cpu"
    assert pairs["--backbone"] == "resnet50" and pairs["--epochs"] == "3" and float(pairs["--lr"]) == 1e-5
    assert float(pairs["--lambda-loc"]) == 0.1 and pairs["--batch-size"] == "8"
    assert float(pairs["--val-fraction"]) == 0.25 and pairs["--input-size"] == "64" and pairs["--seed"] == "7"
    assert pairs["--init-model"] == str(tmp_path / "m.safetensors")
    assert pairs["--stop-file"] == str(tmp_path / "run" / "STOP")


def test_train_command_omits_what_is_not_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = commands.train_command("python", ["data"], "run")
    assert args == ["python", "-m", "MFFMTCore", "train", f"--data={tmp_path / 'data'}", "--output", str(tmp_path / "run"),
                    "--device", "auto"]
    assert commands.train_command("python", ["d"], "r", progress="none")[-2:] == ["--progress", "none"]


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "--epochs: must be > 0"), ({"epochs": 1.5}, "--epochs: must be a whole number"),
    ({"lr": 0.0}, "--lr: must be > 0"), ({"lr": float("nan")}, "--lr: must be a finite number"),
    ({"lambda_loc": -0.1}, "--lambda-loc: must be >= 0"), ({"batch_size": 0}, "--batch-size"),
    ({"val_fraction": 1.0}, "--val-fraction: must be > 0 and < 1"), ({"input_size": 100}, "multiple of 32"),
    ({"backbone": "vgg"}, "--backbone: must be one of resnet18, resnet50"), ({"augment": "none"}, "--augment"),
])
def test_train_command_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        commands.train_command("python", ["data"], "run", **kwargs)


def test_train_command_needs_data():
    with pytest.raises(ValueError, match="no training data"):
        commands.train_command("python", [], "run")


def test_train_command_parses_with_the_real_cli(tmp_path):
    parser = build_parser()
    args = commands.train_command("python", [tmp_path / "d"], tmp_path / "run", backbone="resnet18", epochs=1,
                                  lr=1e-4, lambda_loc=1.0, batch_size=2, val_fraction=0.3,
                                  input_size=64, init_model=tmp_path / "m.safetensors", stop_file=tmp_path / "S",
                                  progress="none")
    parsed = parser.parse_args(args[3:])
    assert parsed.command == "train" and parsed.progress == "none"


def test_training_keywords_are_slicers_camel_case_and_mffmt_trains_own_names(tmp_path):
    from MFFMTCore.base.train_options import OPTIONS

    # Every option the caller gives, in both spellings, and nothing the logic sets itself.
    given = {name for name, declared in OPTIONS.items() if declared.command_line} - {"data", "output", "device",
                                                                                      "stop_file"}
    assert set(commands.TRAIN_KEYWORDS.values()) == given
    assert {"initModel", "batchSize", "labelSmoothing", "lambdaLoc", "valFraction", "init_model", "batch_size",
            "epochs", "lr"} <= set(commands.TRAIN_KEYWORDS)
    camel = commands.train_command("python", ["d"], "run", initModel=tmp_path / "m.safetensors", batchSize=4,
                                   labelSmoothing=0.1, epochs=2)
    snake = commands.train_command("python", ["d"], "run", init_model=tmp_path / "m.safetensors", batch_size=4,
                                   label_smoothing=0.1, epochs=2)
    assert camel == snake and "--init-model" in camel and "--label-smoothing" in camel
    assert commands.train_options({"initModel": "a", "lr": 1e-4}) == {"init_model": "a", "lr": 1e-4}
    with pytest.raises(TypeError, match="'initModel' is given twice"):
        commands.train_options({"initModel": "a", "init_model": "b"})
    with pytest.raises(TypeError, match="'initModle' is not a training option.*initModel"):
        commands.train_options({"initModle": "a"})
    for reserved in ("data", "output", "stopFile", "progressBar"):
        with pytest.raises(TypeError, match="not a training option"):
            commands.train_options({reserved: "x"})


def test_locate_core_package_finds_the_source_checkout_and_skips_other_folders(tmp_path):
    assert commands.locate_core_package([tmp_path, REPO / "MFFMTSlicer", REPO]) == REPO.resolve()
    assert commands.locate_core_package([tmp_path]) is None


def test_child_environment_puts_core_first_on_pythonpath_and_unbuffers():
    env = commands.child_environment({"PYTHONPATH": f"/a{commands.os.pathsep}/core", "HOME": "/h"}, "/core")
    assert env["PYTHONPATH"].split(commands.os.pathsep) == ["/core", "/a"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/h"
    assert commands.child_environment({}, None).get("PYTHONPATH") is None


# ---------------------------------------------------------------------------------------- progress


def test_parse_event_line_accepts_events_and_ignores_other_output():
    assert parse_event_line('{"event": "progress", "done": 1, "total": 3, "input": "a.png"}\n') == {
        "event": "progress", "done": 1, "total": 3, "input": "a.png"}
    assert parse_event_line(' 40%|####  | 2/5\r{"event": "done", "total": 5}') == {"event": "done",
                                                                                            "total": 5}
    for line in ("", "WARNING: something", "{not json", '{"done": 1}', "[1, 2]", '{"event": 3}'):
        assert parse_event_line(line) is None


def test_predict_progress_follows_events():
    state = progress.PredictProgress()
    assert state.fraction == 0.0
    state.update({"event": "progress", "done": 1, "total": 4, "input": "a.png"})
    assert state.fraction == 0.25 and state.current_input == "a.png" and not state.finished
    state.update({"event": "progress", "done": 2, "total": 4, "input": "b.png", "status": "failed",
                  "message": "b.png: file is empty"})
    assert state.failures == {"b.png": "b.png: file is empty"} and state.error is None
    state.update({"event": "done", "total": 4})
    assert state.finished and state.fraction == 1.0 and state.done == 4
    stopped = progress.PredictProgress()
    stopped.update({"event": "error", "message": "out: another run is writing into this folder"})
    assert stopped.finished and stopped.error == "out: another run is writing into this folder"
    stopped = progress.PredictProgress()
    stopped.update({"event": "cancelled", "done": 1, "total": 3})
    assert stopped.finished and stopped.cancelled and stopped.total == 3


def test_jsonl_tail_reads_incrementally_and_waits_for_a_partial_last_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    tail = progress.JsonlTail(path)
    assert tail.read_events() == []  # not created yet
    path.write_bytes(b'{"event": "start", "epochs": 2}\n{"event": "step", "st')
    assert tail.read_events() == [{"event": "start", "epochs": 2}]
    assert tail.read_events() == []
    with open(path, "ab") as handle:
        handle.write(b'ep": 1, "steps": 4}\nnot json\n{"event": "epoch", "epoch": 1, "loss": 0.5}\n')
    assert tail.read_events() == [{"event": "step", "step": 1, "steps": 4}, {"event": "epoch", "epoch": 1, "loss": 0.5}]
    assert tail.bad_lines == 1


def test_jsonl_tail_keeps_a_multibyte_character_split_across_reads(tmp_path):
    path = tmp_path / "progress.jsonl"
    line = json.dumps({"event": "error", "message": "Bild ungültig"}, ensure_ascii=False).encode("utf-8") + b"\n"
    cut = line.index("ü".encode()) + 1  # inside the two bytes of ü
    tail = progress.JsonlTail(path)
    path.write_bytes(line[:cut])
    assert tail.read_events() == []
    with open(path, "ab") as handle:
        handle.write(line[cut:])
    assert tail.read_events() == [{"event": "error", "message": "Bild ungültig"}]


def test_jsonl_tail_starts_over_when_the_file_is_replaced(tmp_path):
    path = tmp_path / "progress.jsonl"
    tail = progress.JsonlTail(path)
    path.write_text('{"event": "start", "epochs": 5}\n{"event": "step", "step": 1}\n')
    assert len(tail.read_events()) == 2
    path.write_text('{"event": "start", "epochs": 1}\n')
    assert tail.read_events() == [{"event": "start", "epochs": 1}]


def test_training_state_tracks_epochs_history_and_end():
    state = progress.TrainingState()
    assert state.summary() == "Starting training..." and state.fraction == 0.0
    events = [
        {"event": "start", "epochs": 2, "steps": 4},
        {"event": "step", "epoch": 1, "epochs": 2, "step": 2, "steps": 4, "loss": 0.9, "eta_s": 300},
        {"event": "epoch", "epoch": 1, "epochs": 2, "loss": 0.8, "val_auc": 0.7, "val_dice": 0.5,
         "val_accuracy": 0.6, "best_auc": 0.7},
        {"event": "step", "epoch": 2, "epochs": 2, "step": 1, "steps": 4, "loss": 0.6},
    ]
    state.update(events[0])
    state.update(events[1])
    assert state.status == "running" and state.fraction == pytest.approx(0.25)
    assert "Epoch 1/2, step 2/4" in state.summary() and "loss 0.900" in state.summary()
    assert "5 min left" in state.summary()
    state.update(events[2])
    assert state.fraction == pytest.approx(0.5)
    assert [(r.epoch, r.loss, r.val_auc, r.val_dice) for r in state.history] == [(1, 0.8, 0.7, 0.5)]
    assert "val AUC 0.700" in state.summary() and "Dice 0.500" in state.summary()
    state.update(events[3])
    assert state.fraction == pytest.approx(0.625)
    state.update({"event": "epoch", "epoch": 2, "loss": 0.5, "val_auc": 0.8, "val_dice": 0.6, "best_auc": 0.8})
    state.update({"event": "done", "best_auc": 0.8})
    assert state.finished and state.status == "done" and state.fraction == 1.0
    assert state.summary().startswith("Done: Epoch 2/2") and "best AUC 0.800" in state.summary()


def test_training_state_follows_the_model_completion_after_the_last_epoch():
    state = progress.TrainingState()
    for epoch in (1, 2):
        state.update({"event": "epoch", "epoch": epoch, "epochs": 2, "loss": 0.5, "val_auc": 0.8, "best_auc": 0.8})
    assert state.fraction == 1.0 and state.status == "running"  # the epochs are done, the model is not complete
    state.update({"event": "progress", "done": 30, "total": 120,
                  "message": "completing the model: scoring 100 validation images"})
    assert state.status == "running" and state.fraction == pytest.approx(0.25)
    assert state.summary() == "Completing the model: scoring 100 validation images (30/120) - best AUC 0.800"
    state.update({"event": "done", "best_auc": 0.8})
    assert state.fraction == 1.0 and state.summary().startswith("Done: Epoch 2/2")


def test_training_state_reports_cancel_and_error_messages():
    state = progress.TrainingState()
    state.update({"event": "cancelled", "epoch": 3, "epochs": 10})
    assert state.finished and state.summary().startswith("Cancelled: Epoch 3/10")
    state = progress.TrainingState()
    state.update({"event": "error", "message": "CUDA out of memory"})
    assert state.status == "error" and "CUDA out of memory" in state.summary()


def test_training_state_keeps_one_record_per_epoch_when_resumed():
    state = progress.TrainingState()
    for epoch, loss in ((1, 0.9), (2, 0.8), (2, 0.7)):
        state.update({"event": "epoch", "epoch": epoch, "epochs": 3, "loss": loss})
    assert [(r.epoch, r.loss) for r in state.history] == [(1, 0.9), (2, 0.7)]
    assert math.isnan(state.history[0].val_auc)


# ----------------------------------------------------------------------------------------- results


ROWS = [
    {"input": "/t/input.nrrd", "frame": 0, "p_benign": 0.13, "p_malignant": 0.87, "prediction": "malignant",
     "lesion_area_mm2": 120.5, "lesion_area_px": 482, "components": 1, "centroid_x": 10.0, "centroid_y": -20.0,
     "centroid_z": 3.0, "error": ""},
    {"input": "/t/input.nrrd", "frame": 1, "p_benign": 0.91, "p_malignant": 0.09, "prediction": "benign",
     "lesion_area_mm2": 0.0, "lesion_area_px": 0, "components": 0, "centroid_x": None, "centroid_y": None,
     "centroid_z": None, "error": ""},
]


def test_results_table_columns_are_typed_and_centroids_are_ras():
    columns = {c.title: c for c in results.results_table(ROWS)}
    assert columns["Frame"].kind == "int" and columns["Frame"].values == [0, 1]
    assert columns["P(malignant)"].kind == "double" and columns["P(malignant)"].values == [0.87, 0.09]
    assert columns["Prediction"].values == ["malignant", "benign"]
    assert columns["Lesion area (mm2)"].values == [120.5, 0.0]
    # LPS (10, -20, 3) is RAS (-10, 20, 3); no lesion -> no centroid.
    assert [columns[f"Centroid {a}"].values[0] for a in "RAS"] == [-10.0, 20.0, 3.0]
    assert all(math.isnan(columns[f"Centroid {a}"].values[1]) for a in "RAS")
    assert len({len(c.values) for c in columns.values()}) == 1


def test_lesion_label_and_centroid():
    assert results.lesion_label(ROWS[0]) == "Malignant 0.87"
    assert results.lesion_label(ROWS[1]) == "Benign 0.91"
    assert results.lesion_label(ROWS[0], with_frame=True) == "Frame 0: Malignant 0.87"
    assert results.lesion_label({"error": "unreadable"}) == "Error: unreadable"
    assert results.centroid_ras(ROWS[0]) == (-10.0, 20.0, 3.0)
    assert results.centroid_ras(ROWS[1]) is None
    assert results.centroid_ras({**ROWS[0], "error": "failed"}) is None


def test_frame_measurements_follow_the_threshold():
    probability = np.zeros((2, 8, 10), np.float32)
    probability[0, 2:4, 3:7] = 0.9  # 2 rows x 4 columns, centre (i=4.5, j=2.5)
    probability[0, 6, 0] = 0.6  # a second, weaker component
    ijk_to_ras = np.diag([-0.5, -0.25, 2.0, 1.0])  # LPS spacing 0.5 x 0.25 mm
    ijk_to_ras[:3, 3] = [-100.0, -50.0, 7.0]
    strict = results.frame_measurements(probability, 0.8, ijk_to_ras)
    assert strict[0]["lesion_area_px"] == 8 and strict[0]["lesion_area_mm2"] == pytest.approx(8 * 0.125)
    expected_ras = ijk_to_ras @ [4.5, 2.5, 0, 1]
    assert geometry.lps_to_ras((strict[0]["centroid_x"], strict[0]["centroid_y"], strict[0]["centroid_z"])
                              ) == pytest.approx(tuple(expected_ras[:3]))
    assert strict[1]["lesion_area_px"] == 0 and math.isnan(strict[1]["centroid_x"])
    lenient = results.frame_measurements(probability, 0.5, ijk_to_ras)
    assert lenient[0]["lesion_area_px"] == 9
    # A picture's unit spacing is no measurement: no mm².
    assert math.isnan(results.frame_measurements(probability, 0.5, ijk_to_ras, spacing_known=False)[0]["lesion_area_mm2"])
    assert strict[0]["components"] == 1 and lenient[0]["components"] == 2 and lenient[1]["components"] == 0
    # The centroid is the largest component's, as mffmt predict reports it.
    assert (lenient[0]["centroid_x"], lenient[0]["centroid_y"]) == (strict[0]["centroid_x"], strict[0]["centroid_y"])


def test_apply_measurements_updates_lesion_fields_but_keeps_the_classification():
    measured = [{"lesion_area_px": 3.0, "lesion_area_mm2": 1.5, "components": 1.0, "centroid_x": 1.0,
                 "centroid_y": 2.0, "centroid_z": 3.0}, {"lesion_area_px": 0.0, "lesion_area_mm2": 0.0,
                                                         "components": 0.0, "centroid_x": math.nan,
                                                         "centroid_y": math.nan, "centroid_z": math.nan}]
    rows = results.apply_measurements(ROWS, measured)
    assert rows[0]["lesion_area_px"] == 3.0 and rows[0]["p_malignant"] == 0.87 and rows[0]["prediction"] == "malignant"
    assert results.centroid_ras(rows[0]) == (-1.0, -2.0, 3.0)
    failed = results.apply_measurements([{**ROWS[0], "error": "x"}], measured)
    assert failed[0]["lesion_area_px"] == 482


# ---------------------------------------------------------------------------------------- geometry


def test_lps_ras_flip_is_its_own_inverse():
    assert geometry.lps_to_ras((1.0, -2.0, 3.0)) == (-1.0, 2.0, 3.0)
    assert geometry.ras_to_lps(geometry.lps_to_ras((4.0, 5.0, -6.0))) == (4.0, 5.0, -6.0)


def test_geometry_round_trips_an_oblique_ijk_to_ras_matrix():
    angle = 0.3
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.2, 0.3, 1.5])
    ijk_to_ras[:3, 3] = [12.0, -7.0, 30.0]
    itk = geometry.ImageGeometry.from_ijk_to_ras(ijk_to_ras)
    assert itk.spacing == pytest.approx((0.2, 0.3, 1.5))
    assert itk.origin == pytest.approx((-12.0, 7.0, 30.0))
    np.testing.assert_allclose(itk.ijk_to_ras(), ijk_to_ras, atol=1e-12)
    with pytest.raises(ValueError, match="zero-length"):
        geometry.ImageGeometry.from_ijk_to_ras(np.diag([1.0, 0.0, 1.0, 1.0]))


def test_frame_ijk_to_ras_moves_along_k():
    ijk_to_ras = np.diag([1.0, 1.0, 2.5, 1.0])
    assert geometry.frame_ijk_to_ras(ijk_to_ras, 3)[:3, 3].tolist() == [0.0, 0.0, 7.5]


def test_roi_from_ras_bounds_counts_pixels_whose_centre_is_inside():
    # Slicer's usual 2D image: IJK-to-RAS flips i and j (LPS file), spacing 0.5 mm.
    frame = geometry.ImageGeometry.from_ijk_to_ras(np.diag([-0.5, -0.5, 1.0, 1.0]))

    def box(bounds):
        return resolve_roi(PhysicalBox(geometry.ras_to_lps(bounds[0::2]), geometry.ras_to_lps(bounds[1::2])),
                           frame, (48, 64))

    # RAS r in [-10.2, -4.9] -> i in [9.8, 20.4] -> columns 10..20; a in [-3.1, -1.0] -> j in [2, 6.2] -> rows 2..6
    assert box((-10.2, -4.9, -3.1, -1.0, -5.0, 5.0)) == (10, 2, 11, 5)
    assert box((-100.0, 0.0, -100.0, 0.0, 0.0, 0.0)) == (0, 0, 64, 48)  # cut to the frame
    with pytest.raises(ValueError, match="outside"):
        box((10.0, 20.0, 10.0, 20.0, 0.0, 0.0))


def test_pixel_area():
    assert geometry.pixel_area(np.diag([-0.5, -0.25, 3.0, 1.0])) == pytest.approx(0.125)
    assert geometry.ImageGeometry.from_ijk_to_ras(np.diag([-0.5, -0.25, 3.0, 1.0])).pixel_area_mm2() == pytest.approx(0.125)


# ----------------------------------------------------------------------------------------- volumes


def _oblique_ijk_to_ras() -> np.ndarray:
    ijk_to_ras = np.array([[-0.4, 0.0, 0.0, 15.0], [0.0, -0.6, 0.0, 25.0], [0.0, 0.0, 2.0, -3.0], [0, 0, 0, 1.0]])
    return ijk_to_ras


def test_write_volume_keeps_voxels_and_geometry(tmp_path):
    array = np.arange(2 * 5 * 7, dtype=np.int16).reshape(2, 5, 7)
    path = volumes.write_volume(array, _oblique_ijk_to_ras(), tmp_path / "v.nrrd")
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert image.GetSpacing() == pytest.approx((0.4, 0.6, 2.0))
    assert image.GetOrigin() == pytest.approx((-15.0, -25.0, -3.0))
    # Voxel (i=2, j=3, k=1) is at RAS ijk_to_ras @ (2, 3, 1) = (14.2, 23.2, -1): LPS (-14.2, -23.2, -1).
    assert image.TransformIndexToPhysicalPoint((2, 3, 1)) == pytest.approx((-14.2, -23.2, -1.0))
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_write_volume_writes_rgb_frames_as_vectors(tmp_path):
    rgb = np.zeros((1, 4, 6, 3), np.uint8)
    rgb[0, 1, 2] = (255, 0, 0)
    image = sitk.ReadImage(str(volumes.write_volume(rgb, np.eye(4), tmp_path / "rgb.nrrd")))
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetSize() == (6, 4, 1)
    with pytest.raises(ValueError, match="voxel array"):
        volumes.write_volume(np.zeros((4, 4)), np.eye(4), tmp_path / "flat.nrrd")


def test_stack_frames_builds_a_grey_clip():
    grey = [np.full((1, 3, 4), value, np.uint8) for value in (1, 2, 3)]
    clip = volumes.stack_frames(grey)
    assert clip.shape == (3, 3, 4) and clip.dtype == np.uint8 and clip[:, 0, 0].tolist() == [1, 2, 3]
    colour = np.zeros((1, 3, 4, 3), np.uint8)
    colour[..., 1] = 100  # pure green: luminance 0.587 * 100
    assert volumes.stack_frames([colour])[0, 0, 0] == pytest.approx(58.7, abs=1e-3)


def test_stack_frames_rejects_volumes_and_mixed_sizes():
    with pytest.raises(ValueError, match="no frames"):
        volumes.stack_frames([])
    with pytest.raises(ValueError, match="2D frames"):
        volumes.stack_frames([np.zeros((2, 3, 4))])
    with pytest.raises(ValueError, match="same size"):
        volumes.stack_frames([np.zeros((1, 3, 4)), np.zeros((1, 3, 5))])


# -------------------------------------------------------------------------------------- scene data


def _scene_volume(name, frames=1, label="benign", lesion_frames=(0,)):
    image = np.random.default_rng(0).integers(0, 255, (frames, 16, 20)).astype(np.uint8)
    mask = np.zeros((frames, 16, 20), np.uint8)
    for k in lesion_frames:
        mask[k, 4:9, 5:12] = 1
    return scene_data.SceneVolume(name, image, _oblique_ijk_to_ras(), label, mask)


def test_scene_export_writes_a_datalist_of_the_contract_format(tmp_path):
    volumes_in = [
        _scene_volume("Case 1/left"),  # single frame, lesion
        _scene_volume("clip", frames=4, label="malignant", lesion_frames=(1, 3)),  # only annotated frames
        scene_data.SceneVolume("normal", np.zeros((1, 16, 20), np.uint8), np.eye(4), "normal"),  # empty mask
        scene_data.SceneVolume("class only", np.zeros((1, 16, 20), np.uint8), np.eye(4), "benign"),  # no mask
        scene_data.SceneVolume("nothing", np.zeros((1, 16, 20), np.uint8), np.eye(4)),  # skipped
    ]
    export = scene_data.write_training_datalist(volumes_in, tmp_path / "export")
    data = json.loads(export.datalist.read_text())
    items = data["training"]
    assert export.items == len(items) == 5 and len(export.skipped) == 1 and "nothing" in export.skipped[0]
    assert [item.get("label") for item in items] == ["benign", "malignant", "malignant", "normal", "benign"]
    assert [item["group"] for item in items] == ["Case 1/left", "clip", "clip", "normal", "class only"]
    assert {item["dataset"] for item in items} == {"slicer"}
    assert "mask" not in items[4] and "mask" in items[3]
    for item in items:
        for key in ("image", "mask"):
            if key in item:
                assert not Path(item[key]).is_absolute() and (export.datalist.parent / item[key]).is_file()
    # A clip frame keeps its position: frame 3 of the clip starts 3 slices further along k.
    frame3 = sitk.ReadImage(str(export.datalist.parent / items[2]["image"]))
    assert frame3.GetSize() == (20, 16, 1)
    assert frame3.GetOrigin() == pytest.approx((-15.0, -25.0, -3.0 + 3 * 2.0))
    mask3 = sitk.GetArrayFromImage(sitk.ReadImage(str(export.datalist.parent / items[2]["mask"])))
    assert mask3.sum() == 5 * 7 and set(np.unique(mask3)) == {0, 1}
    normal_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(export.datalist.parent / items[3]["mask"])))
    assert normal_mask.sum() == 0


def test_scene_export_refuses_inconsistent_volumes(tmp_path):
    with pytest.raises(ValueError, match="labelled normal"):
        scene_data.write_training_datalist([_scene_volume("n", label="normal")], tmp_path)
    with pytest.raises(ValueError, match="label must be one of"):
        scene_data.write_training_datalist([_scene_volume("x", label="cancer")], tmp_path)
    bad = _scene_volume("m")
    bad.mask = np.zeros((1, 5, 5), np.uint8)
    with pytest.raises(ValueError, match="mask shape"):
        scene_data.write_training_datalist([bad], tmp_path)
    with pytest.raises(ValueError, match="no training data in the scene"):
        scene_data.write_training_datalist([_scene_volume("u", label=None, lesion_frames=())], tmp_path)


def test_scene_export_is_read_by_the_project_datalist_reader(tmp_path):
    export = scene_data.write_training_datalist([_scene_volume("a"), _scene_volume("b", label="malignant")], tmp_path)
    records = read_datalist(export.datalist)
    assert [r.label for r in records] == ["benign", "malignant"]
    assert all(Path(r.image).is_file() and len(r.masks) == 1 and Path(r.masks[0]).is_file() for r in records)
    assert [r.group for r in records] == ["slicer:a", "slicer:b"]


# ------------------------------------------------------------------------------------- terminology


def test_lesion_terminology_has_slicers_seven_part_format():
    parts = terminology.LESION_TERMINOLOGY.tag().split("~")
    assert len(parts) == 7
    assert parts[0] == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert parts[1] == "SCT^49755003^Morphologically Altered Structure"
    assert parts[2] == "SCT^4147007^Mass"
    assert parts[3] == "^^"
    assert parts[4] == "Anatomic codes - DICOM master list"
    assert parts[5] == "SCT^76752008^Breast"
    assert parts[6] == "^^"
    assert terminology.SEGMENT_NAME == "Lesion" and all(0 <= c <= 1 for c in terminology.SEGMENT_COLOR)


def test_lesion_terminology_as_slicerio_writes_it():
    assert terminology.LESION_TERMINOLOGY.slicerio() == {
        "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
        "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "4147007", "Mass"],
        "anatomicContextName": "Anatomic codes - DICOM master list",
        "anatomicRegion": ["SCT", "76752008", "Breast"],
    }


# ------------------------------------------------------------------------------------ dependencies


def _pyproject_requirements(section: list[str]) -> dict[str, str]:
    requirements = {}
    for line in section:
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
        requirements[name.lower()] = line[len(name):].strip()
    return requirements


def test_requirements_include_pyproject_dependencies_with_the_same_ranges():
    declared = _pyproject_requirements(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    listed = {r.name.lower(): r.specifier for r in REQUIREMENTS}
    assert {name: listed.get(name) for name in declared} == declared


def test_requirements_cover_every_package_mffmtcore_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = {name for extra in project.get("optional-dependencies", {}).values()
                for name in _pyproject_requirements(extra)}
    imported = set()
    for path in (REPO / "MFFMTCore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "MFFMTCore"}
    covered = {r.module for r in REQUIREMENTS} | optional
    assert third_party - covered == set()


def test_check_requirements_in_this_environment_finds_everything():
    statuses = dependencies.check_requirements()
    assert dependencies.missing_requirements(statuses) == [], [s.describe() for s in statuses]


def test_check_requirements_reports_missing_and_too_old_packages():
    import importlib.metadata as metadata

    versions = {"torch": "2.13.0+cpu", "monai": "1.5.2", "tqdm": "4.66.0"}

    def version_of(name):
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    reqs = [Requirement("torch", ">=2.2,<3", "torch", "pytorch"),
            Requirement("monai", ">=1.6,<2", "monai"),
            Requirement("tqdm", ">=4.60", "tqdm"),
            Requirement("safetensors", ">=0.4", "safetensors"),
            Requirement("SimpleITK", ">=2.3", "SimpleITK", "bundled")]
    statuses = dependencies.check_requirements(reqs, version_of, importable=lambda module: module == "SimpleITK")
    by_name = {s.requirement.name: s for s in statuses}
    assert by_name["torch"].ok and by_name["tqdm"].ok
    assert not by_name["monai"].ok and by_name["monai"].describe() == "monai>=1.6,<2 (found 1.5.2)"
    assert not by_name["safetensors"].ok and by_name["safetensors"].describe() == "safetensors>=0.4 (not installed)"
    # Installed without package metadata (Slicer's own build): importable counts as present.
    assert by_name["SimpleITK"].ok
    assert [s.requirement.name for s in dependencies.missing_requirements(statuses)] == ["monai", "safetensors"]


def test_lesion_decision_reaches_the_table_and_keeps_lesion_free_frames_empty(tmp_path):
    # As mffmt predict writes it: JSON booleans in results.json, "True"/"False" in results.csv.
    rows = [{**ROWS[0], "lesion_present": True, "p_lesion": 0.99}, {**ROWS[1], "lesion_present": "False", "p_lesion": 0.4}]
    columns = {c.title: c for c in results.results_table(rows)}
    assert columns["Lesion present"].values == ["yes", "no"]
    assert columns["P(lesion)"].values == [0.99, 0.4]
    assert results.lesion_free_frames(rows) == {1}
    probability = np.zeros((2, 8, 10), np.float32)
    probability[:, 2:4, 3:7] = 0.9
    measured = results.frame_measurements(probability, 0.5, np.eye(4), lesion_free={1})
    assert measured[0]["lesion_area_px"] == 8 and measured[1]["lesion_area_px"] == 0
    assert measured[1]["components"] == 0 and math.isnan(measured[1]["centroid_x"])
