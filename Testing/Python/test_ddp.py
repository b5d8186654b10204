"""Multi-process training: ``torchrun --nproc_per_node 2 --standalone -m MFFMTCore train`` (gloo on CPU)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from test_train_synthetic import write_dataset

from MFFMTCore.model_file import load_model
from MFFMTCore.training.checkpoint import load_checkpoint
from MFFMTCore.training.progress import read_progress

pytestmark = pytest.mark.slow


def torchrun(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "MFFMTCore", "train", *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def test_two_processes_share_each_epoch_and_resume(tmp_path):
    datalist = write_dataset(tmp_path / "data", count=20)
    run_dir = tmp_path / "run"
    common = ["--output", str(run_dir), "--input-size", "64", "--batch-size", "3", "--threads", "1",
              "--progress", "none"]
    result = torchrun("--data", str(datalist), "--val-fraction", "0.2", "--epochs", "2", *common)
    assert result.returncode == 0, result.stderr[-3000:]

    events = read_progress(run_dir / "progress.jsonl")
    start = events[0]
    assert start["event"] == "start" and "2 process(es)" in start["message"]
    assert [event["event"] for event in events].count("start") == 1  # only rank 0 writes
    train_images = 20 - int(start["message"].split("validating on ")[1].split()[0])
    assert start["steps"] == math.ceil(math.ceil(train_images / 2) / 3)  # each process sees half an epoch
    assert events[-1]["event"] == "done"
    _, info = load_model(run_dir / "model.safetensors")
    assert info.training["processes"] == 2

    result = torchrun("--resume", "--epochs", "3", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_progress(run_dir / "progress.jsonl")
    assert any(event["event"] == "resumed" and event["epoch"] == 2 for event in events)
    assert events[-1]["event"] == "done"
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 3
    assert not list(run_dir.glob(".*tmp*"))
