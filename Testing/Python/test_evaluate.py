"""``mffmt evaluate`` on tiny synthetic data with an untrained 64 x 64 model file."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from test_train_synthetic import write_dataset

from MFFMTCore.base.progress_events import EVENT_FIELDS, parse_event_line
from MFFMTCore.cli import main
from MFFMTCore.evaluation.plots import plot_confusion_matrix, plot_roc, plot_training_curves


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, random_model):
    """A small model with the auxiliary BI-RADS head and the recipe of a frame-mode training run."""
    return random_model(tmp_path_factory.mktemp("model") / "model.safetensors", network={"aux_classes": {"birads": 4}},
                        training={"recipe": {"mode": "frame", "margin": 0.2}})


def evaluate(model_file, data, output, *extra):
    return main(["evaluate", "--model", str(model_file), "--data", str(data), "--output", str(output),
                 "--threads", "1", "--progress", "none", *extra])


def test_writes_metrics_pictures_and_predictions(model_file, tmp_path, capsys):
    datalist = write_dataset(tmp_path / "data", count=8, normal=2)
    assert evaluate(model_file, datalist, tmp_path / "out", "--progress", "json", "--batch-size", "4",
                    "--malignancy-threshold", "0.4") == 0
    events = [event for event in map(parse_event_line, capsys.readouterr().out.splitlines()) if event]
    assert [event["event"] for event in events] == ["start", "progress", "progress", "progress", "done"]
    assert [(event["done"], event["total"]) for event in events[1:4]] == [(4, 10), (8, 10), (10, 10)]
    assert all(set(event) <= set(EVENT_FIELDS) for event in events)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["malignancy_threshold"] == 0.4 and metrics["lesion_threshold"] == 0.5
    overall = metrics["overall"]
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc", "dice", "false_lesion_rate"):
        assert key in overall
    assert overall["n"] == 8 and overall["n_empty_masks"] == 2 and metrics["samples"] == 10
    assert set(metrics["scanners"]) == {"scanA", "scanB"} and list(metrics["datasets"]) == ["datalist"]
    assert overall["n_birads"] == 6 and metrics["input_size"] == [64, 64]
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10
    assert {row["label"] for row in rows} == {"benign", "malignant", "normal"}
    assert all(0.0 <= float(row["p_malignant"]) <= 1.0 for row in rows)
    correct = sum(int(row["correct"]) for row in rows if row["correct"])
    assert correct / 8 == pytest.approx(overall["accuracy"])
    for picture in ("roc.png", "confusion_matrix.png"):
        with Image.open(tmp_path / "out" / picture) as image:
            assert image.format == "PNG" and image.width > 200


def test_bad_images_are_named_and_the_rest_evaluated(model_file, tmp_path, capsys):
    datalist = write_dataset(tmp_path / "data", count=6)
    (tmp_path / "data" / "case001.png").write_bytes(b"not a png")
    Image.new("L", (30, 20)).save(tmp_path / "data" / "case002_mask.png")  # mask size differs from its image
    assert evaluate(model_file, datalist, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "case001.png" in err and "case002.png" in err and "differs from mask size" in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["samples"] == 4 and len(metrics["failed"]) == 2
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        errors = [row["error"] for row in csv.DictReader(handle) if row["error"]]
    assert len(errors) == 2


def test_missing_data_and_model_are_named(model_file, tmp_path, capsys):
    assert evaluate(model_file, tmp_path / "nowhere", tmp_path / "out") == 2
    assert "nowhere: dataset not found" in capsys.readouterr().err
    datalist = write_dataset(tmp_path / "data", count=2)
    assert evaluate(tmp_path / "missing.safetensors", datalist, tmp_path / "out") == 2
    assert "missing.safetensors: model file not found" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text('{"training": []}')
    assert evaluate(model_file, tmp_path / "empty.json", tmp_path / "out") == 2
    assert "empty.json: lists no images" in capsys.readouterr().err


def test_split_keeps_only_validation_images(model_file, tmp_path):
    datalist = write_dataset(tmp_path / "data", count=6)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["datalist/case000"], "validation": ["datalist/case001", "datalist/case004"]}))
    assert evaluate(model_file, datalist, tmp_path / "out", "--split", str(split)) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["samples"] == 2


def test_pictures_are_written(tmp_path):
    plot_roc({"all": ([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.5]), "one class": ([1, 1], [0.2, 0.3])}, tmp_path / "roc.png")
    plot_confusion_matrix([[5, 1], [0, 0]], tmp_path / "cm.png")
    plot_training_curves([{"epoch": 1, "loss": 2.0, "val_auc": None}, {"epoch": 2, "loss": 1.5, "val_auc": 0.7}],
                         tmp_path / "curves.png")
    for name in ("roc.png", "cm.png", "curves.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
