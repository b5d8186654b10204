"""Splits and evaluation key records by content (issue 21): one image under two names, or in two
overlapping datalists, lands on one side of a split only and is evaluated once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_synthetic import write_dataset

from MFFMTCore.cli import main
from MFFMTCore.data import DatasetError, read_datalist, split_by_group
from MFFMTCore.data.records import content_key
from MFFMTCore.training.datasplit import plan_split


def respelled(datalist: Path, name: str) -> Path:
    """A second datalist over the same images, each spelled another way and in its own group."""
    items = json.loads(datalist.read_text())["training"]
    for item in items:
        item["image"] = f"../{datalist.parent.name}/./{item['image']}"
        item["group"] = f"other-{item['group']}"
    other = datalist.parent / name
    other.write_text(json.dumps({"training": items}))
    return other


def test_the_same_image_under_two_spellings_lands_on_one_side(tmp_path):
    datalist = write_dataset(tmp_path / "data", count=24)
    other = respelled(datalist, "again.json")
    records = read_datalist(datalist) + read_datalist(other)
    assert content_key(records[0]) == content_key(records[24]) and records[0].id != records[24].id
    for seed in range(5):
        train, val = split_by_group(records, val_fraction=0.25, seed=seed)
        assert val and not {content_key(r) for r in train} & {content_key(r) for r in val}
    train, val, _ = plan_split([str(datalist), str(other)], val_fraction=0.25, seed=0)
    assert not {content_key(r) for r in train} & {content_key(r) for r in val}


def test_a_datalist_whose_validation_holds_a_training_image_is_refused(tmp_path):
    datalist = write_dataset(tmp_path / "data", count=8)
    items = json.loads(datalist.read_text())["training"]
    copy = dict(items[0], image=f"../data/{items[0]['image']}", group="elsewhere")
    datalist.write_text(json.dumps({"training": items, "validation": [copy]}))
    with pytest.raises(DatasetError, match="is a validation image and also a training image"):
        plan_split([str(datalist)], val_fraction=0.25, seed=0)
    datalist.write_text(json.dumps({"training": items[1:], "validation": [items[0]]}))
    assert len(plan_split([str(datalist)], val_fraction=0.25, seed=0)[1]) == 1


def test_evaluate_counts_a_duplicated_entry_once_with_a_note(random_model, tmp_path, capsys):
    model = random_model(tmp_path / "model.safetensors", training={"recipe": {"mode": "frame", "margin": 0.2}})
    datalist = write_dataset(tmp_path / "data", count=6)
    items = json.loads(datalist.read_text())["training"]
    datalist.write_text(json.dumps({"training": items + [dict(items[0], image=f"../data/{items[0]['image']}")]}))
    assert main(["evaluate", "--model", str(model), "--data", str(datalist), "--output", str(tmp_path / "out"),
                 "--threads", "1", "--progress", "none"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["samples"] == 6 and len(metrics["duplicates"]) == 1
    notes = [line for line in capsys.readouterr().err.splitlines() if "duplicate" in line]
    assert notes == [f"mffmt evaluate: note: 1 duplicate entries counted once (e.g. {tmp_path}/data/../data/case000.png "
                     f"is {tmp_path}/data/case000.png)"]
