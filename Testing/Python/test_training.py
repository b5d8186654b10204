"""Trainer tests on tiny synthetic data (64 x 64 inputs, one CPU thread)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_train_synthetic import write_dataset

from MFFMTCore.base.run_folder import RUN_FILES, RunFolder
from MFFMTCore.cli import main
from MFFMTCore.data import MFFMTDataset, make_samples, read_dataset
from MFFMTCore.losses import MFFMTLoss
from MFFMTCore.model_file import load_model, read_model_info
from MFFMTCore.network import MFFMT
from MFFMTCore.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from MFFMTCore.training.config import TrainConfig, merge_config, read_config_file
from MFFMTCore.training.optim import build_optimizer, lr_factor
from MFFMTCore.training.progress import read_progress
from MFFMTCore.training.trainer import TrainingRun, selection_score

TINY = ["--input-size", "64", "--batch-size", "4", "--threads", "1", "--progress", "none", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synthetic"), count=20, normal=4)


def train(datalist, run_dir, *extra: str) -> int:
    return main(["train", "--data", str(datalist), "--output", str(run_dir), *TINY, *extra])


@pytest.fixture(scope="module")
def finished_run(datalist, tmp_path_factory):
    """A run of two epochs, trained once for the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert train(datalist, run_dir, "--epochs", "2") == 0
    return run_dir


def test_loss_falls_on_a_learnable_batch(datalist):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    samples = make_samples(read_dataset(datalist))
    batch = torch.utils.data.default_collate([MFFMTDataset(samples[:8], train=False, size=(64, 64))[i]
                                              for i in range(8)])
    model = MFFMT(aux_classes={"birads": 4})
    config = TrainConfig(data=["x"], output="y").resolved()
    optimizer = build_optimizer(model, config)
    loss_fn = MFFMTLoss()
    losses = []
    for _ in range(12):
        parts = loss_fn(model(batch["image"]), batch)
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        losses.append(float(parts.total.detach()))
    assert all(math.isfinite(value) for value in losses)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_run_writes_complete_files(datalist, finished_run):
    run_dir = finished_run

    events = read_progress(run_dir / "progress.jsonl")
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2
    steps = [event for event in events if event["event"] == "step"]
    assert steps and all({"loss", "loss_cls", "loss_loc", "loss_seg", "eta_s", "epoch", "steps"} <= set(e) for e in steps)
    epoch_event = next(event for event in events if event["event"] == "epoch")
    assert {"val_auc", "val_dice", "val_accuracy", "best_auc", "message"} <= set(epoch_event)

    info = read_model_info(run_dir / "model.safetensors")
    assert info.architecture["aux_classes"] == {"birads": 4}
    assert info.class_names == ["benign", "malignant"] and info.input_size == [64, 64]
    assert info.intensity == "minmax" and info.threshold == 0.5
    assert info.training["recipe"]["optimizer"] == "adamw" and info.training["recipe"]["lr"] == 1e-3
    assert info.training["data_summary"]["train"]["images"] + info.training["data_summary"]["validation"]["images"] == 24
    assert info.training["split"]["method"] == "group"
    assert set(info.validation) >= {"overall", "datasets", "scanners", "epoch", "loss"}
    assert set(info.validation["scanners"]) == {"scanA", "scanB"}
    assert {"auc", "dice", "false_lesion_rate", "sensitivity"} <= set(info.validation["overall"])
    model, _ = load_model(run_dir / "model.safetensors")
    assert model(torch.rand(1, 1, 64, 64)).mask_logits.shape == (1, 1, 64, 64)

    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2

    split = json.loads((run_dir / "split.json").read_text())
    groups = {record.id: record.group for record in read_dataset(datalist)}
    train_groups = {groups[key.split("/", 1)[1]] for key in split["train"]}
    val_groups = {groups[key.split("/", 1)[1]] for key in split["validation"]}
    assert train_groups and val_groups and not train_groups & val_groups
    assert [entry["epoch"] for entry in json.loads((run_dir / "history.json").read_text())] == [1, 2]
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    assert json.loads((run_dir / "config.json").read_text())["input_size"] == 64
    # A run from scratch has no site report (that compares a fine-tuned model with its parent).
    from_scratch = [name for name in RUN_FILES if not name.startswith("site_report")]
    assert RunFolder(run_dir).earlier_run() == from_scratch and RunFolder(run_dir).read_split() == split


def test_label_smoothing_reaches_the_training_steps_only(datalist, finished_run, tmp_path):
    assert train(datalist, tmp_path / "smoothed", "--epochs", "1", "--label-smoothing", "0.3") == 0
    plain, smoothed = (read_progress(RunFolder(run).progress) for run in (finished_run, tmp_path / "smoothed"))
    first = [next(event for event in events if event["event"] == "step") for events in (plain, smoothed)]
    # Same seed, data and initial weights: the first step's forward pass is the same; only L_cls differs.
    assert first[0]["loss_loc"] == pytest.approx(first[1]["loss_loc"], rel=1e-6)
    assert first[1]["loss_cls"] != pytest.approx(first[0]["loss_cls"], rel=1e-3)
    info = read_model_info(RunFolder(tmp_path / "smoothed").model)
    assert info.training["recipe"]["label_smoothing"] == 0.3
    assert read_model_info(RunFolder(finished_run).model).training["recipe"]["label_smoothing"] == 0.0


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(datalist, tmp_path, capsys):
    assert train(datalist, tmp_path / "empty", "--resume") == 2
    assert "config.json: not found" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    assert train(datalist, run_dir, "--epochs", "1") == 2
    assert "already holds a training run" in capsys.readouterr().err


def _stop_after_first_epoch(monkeypatch, run_dir):
    original = TrainingRun._finish_epoch

    def finish_then_stop(self, epoch, *args, **kwargs):
        original(self, epoch, *args, **kwargs)
        (run_dir / "STOP").touch()

    monkeypatch.setattr(TrainingRun, "_finish_epoch", finish_then_stop)


def test_cancel_then_resume_matches_an_uninterrupted_run(datalist, finished_run, tmp_path, monkeypatch):
    straight = finished_run

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        _stop_after_first_epoch(patch, interrupted)
        assert train(datalist, interrupted, "--epochs", "2") == 0  # cancelled runs exit 0
    events = read_progress(interrupted / "progress.jsonl")
    assert events[-1]["event"] == "cancelled" and "resume" in events[-1]["message"]
    assert load_checkpoint(interrupted / "checkpoint.pt")["epoch"] == 1
    load_model(interrupted / "model.safetensors")  # the best model is intact and loadable
    assert not (interrupted / "STOP").exists()

    assert main(["train", "--output", str(interrupted), "--resume"]) == 0
    events = read_progress(interrupted / "progress.jsonl")
    resumed = next(event for event in events if event["event"] == "resumed")
    assert resumed["epoch"] == 1 and "resumed from epoch 1" in resumed["message"]
    assert events[-1]["event"] == "done"

    expected, actual = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(interrupted / "checkpoint.pt")
    assert actual["epoch"] == 2 and actual["global_step"] == expected["global_step"]
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(actual["model"][name], tensor, msg=name)
    for index, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(actual["optimizer"]["state"][index][key], value)
    assert actual["scheduler"]["last_epoch"] == expected["scheduler"]["last_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly(datalist, tmp_path, signal_number):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "MFFMTCore", "train", "--data", str(datalist), "--output", str(run_dir),
               *TINY, "--epochs", "200"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(event["event"] == "epoch" for event in _events(run_dir)):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.2)
        process.send_signal(signal_number)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err[-2000:]
    events = read_progress(run_dir / "progress.jsonl")
    assert events[-1]["event"] == "cancelled" and signal.Signals(signal_number).name in events[-1]["message"]
    finished = [event["epoch"] for event in events if event["event"] == "epoch"]
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == finished[-1]
    load_model(run_dir / "model.safetensors")
    assert not list(run_dir.glob(".*tmp*"))


def _events(run_dir):
    return read_progress(run_dir / "progress.jsonl") if (run_dir / "progress.jsonl").exists() else []


def test_fine_tune_from_a_model_file(datalist, finished_run, tmp_path):
    base = finished_run / "model.safetensors"
    assert train(datalist, tmp_path / "tuned", "--epochs", "1", "--init-model", str(base), "--lr", "1e-4") == 0
    start = read_progress(tmp_path / "tuned" / "progress.jsonl")[0]
    assert start["event"] == "start" and f"initialised from {base}" in start["message"]
    assert read_model_info(tmp_path / "tuned" / "model.safetensors").training["recipe"]["init_model"] == str(base)


def test_checkpoint_round_trip_restores_random_generators(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    save_checkpoint(tmp_path / "c.pt", {"epoch": 1, "rng": state})
    restore_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]


def test_damaged_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint.pt: not a readable training checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_config_layers_and_checks(tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"data": ["data/busi"], "batch_size": 4, "lr": 0.01}))
    values = read_config_file(config_file)
    assert values["data"] == [str(tmp_path / "data" / "busi")]  # relative to the config file
    config = merge_config(values, {"lr": 0.5, "epochs": None, "output": "run"}).resolved()
    assert (config.batch_size, config.lr, config.epochs) == (4, 0.5, 30)  # file < command line; preset fills
    paper = TrainConfig(data=["d"], output="o", preset="paper", backbone="resnet50").resolved()
    assert (paper.optimizer, paper.lr, paper.epochs, paper.batch_size, paper.lambda_loc) == ("adam", 1e-5, 200, 8, 0.1)
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(data=["d"], output="o", input_size=100).resolved()
    config_file.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match="unknown option.*learning_rate"):
        read_config_file(config_file)


def test_schedule_warms_up_then_decays():
    factors = [lr_factor(step, 4, 20, "cosine") for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[20] == pytest.approx(0.0)
    assert lr_factor(10, 0, 20, "constant") == 1.0


def test_best_model_selection_falls_back_when_auc_is_undefined():
    assert selection_score({"val_auc": 0.8, "val_dice": 0.1, "val_loss": 3}) > selection_score(
        {"val_auc": 0.7, "val_dice": 0.9, "val_loss": 1})
    assert selection_score({"val_auc": 0.8, "val_dice": 0.5, "val_loss": 3}) > selection_score(
        {"val_auc": 0.8, "val_dice": 0.4, "val_loss": 1})
    assert selection_score({"val_auc": math.nan, "val_dice": 0.5, "val_loss": 3}) > selection_score(
        {"val_auc": None, "val_dice": 0.4, "val_loss": 1})
    assert selection_score({"val_auc": math.nan, "val_dice": math.nan, "val_loss": 1}) > selection_score(
        {"val_auc": math.nan, "val_dice": math.nan, "val_loss": 2})
