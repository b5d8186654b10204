"""Smoke test on real data: train on a few dozen BUSI and BUS-BRA images, resume, evaluate.

Runs in about a minute on two CPU cores (64 x 64 inputs). Skips where ../shared/data is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from MFFMTCore.cli import main
from MFFMTCore.data import read_busbra, read_busi
from MFFMTCore.model_file import read_model_info
from MFFMTCore.training.progress import read_progress

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "busi").is_dir() or not (DATA / "busbra").is_dir(),
                       reason=f"real data not found at {DATA} (BUSI and BUS-BRA folders)"),
]


def few_records(per_label: dict[str, int]) -> list[dict]:
    """Datalist items for the first groups of each (dataset, label) until ``per_label`` images."""
    items = []
    for records in (read_busi(DATA / "busi"), read_busbra(DATA / "busbra")):
        counts: dict[str, int] = {}
        for record in records:
            if counts.get(record.label, 0) >= per_label.get(record.label, 0):
                continue
            counts[record.label] = counts.get(record.label, 0) + 1
            items.append({"id": record.id, "dataset": record.dataset, "image": record.image, "mask": record.masks,
                          "label": record.label, "group": record.group_key(), "scanner": record.scanner,
                          "birads": record.birads})
    return items


def test_train_resume_and_evaluate_on_real_images(tmp_path):
    datalist = tmp_path / "few.json"
    datalist.write_text(json.dumps({"training": few_records({"benign": 12, "malignant": 10, "normal": 4})}))
    run_dir = tmp_path / "run"
    options = ["--input-size", "64", "--batch-size", "8", "--threads", "1", "--progress", "none"]
    assert main(["train", "--data", str(datalist), "--output", str(run_dir), "--epochs", "2", *options]) == 0
    assert main(["train", "--output", str(run_dir), "--resume", "--epochs", "4", *options]) == 0

    events = read_progress(run_dir / "progress.jsonl")
    assert any(event["event"] == "resumed" and event["epoch"] == 2 for event in events)
    epochs = [event for event in events if event["event"] == "epoch"]
    assert [event["epoch"] for event in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["loss"] < epochs[0]["loss"], [event["loss"] for event in epochs]
    info = read_model_info(run_dir / "model.safetensors")
    assert set(info.training["data_summary"]["train"]["datasets"]) == {"BUSI", "BUS-BRA"}
    assert info.architecture["aux_classes"] == {"birads": 4}  # BUS-BRA carries BI-RADS

    output = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(run_dir / "model.safetensors"), "--data", str(datalist),
                 "--split", str(run_dir / "split.json"), "--output", str(output), "--progress", "none"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"BUSI", "BUS-BRA"}
    assert metrics["samples"] == info.training["data_summary"]["validation"]["images"]
    assert {"auc", "dice", "false_lesion_rate", "sensitivity", "specificity"} <= set(metrics["overall"])
    assert (output / "roc.png").stat().st_size > 0 and (output / "confusion_matrix.png").stat().st_size > 0
