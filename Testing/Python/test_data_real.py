"""Readers, splits and the dataset on the real BUSI and BUS-BRA folders in ../shared/data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from MFFMTCore.data import (
    MFFMTDataset,
    busbra_official_folds,
    make_samples,
    read_busbra,
    read_busi,
    read_dataset,
    split_by_group,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (DATA / "busi").is_dir() or not (DATA / "busbra").is_dir(),
                       reason=f"real data not found at {DATA} (BUSI and BUS-BRA folders)"),
]


def test_real_counts_and_labels() -> None:
    busi, busbra = read_busi(DATA / "busi"), read_busbra(DATA / "busbra")
    assert len(busi) == 630 and Counter(r.label for r in busi) == {"benign": 347, "malignant": 172, "normal": 111}
    assert all(record.masks and record.group and record.group.startswith("busi:") for record in busi)
    assert len(busbra) == 1350 and Counter(r.label for r in busbra) == {"benign": 933, "malignant": 417}
    assert Counter(r.scanner for r in busbra).keys() == {"GE Logiq 5 @10-12MHz", "GE Logiq 7 @10-14MHz"}
    assert all(record.box and record.birads in {"2", "3", "4", "5"} for record in busbra)
    assert len({record.group for record in busbra}) == 777  # patients
    assert len(busbra_official_folds(DATA / "busbra")) == 4


def test_real_split_keeps_duplicates_together() -> None:
    records = read_dataset(DATA / "busi") + read_dataset(DATA / "busbra")
    train, val = split_by_group(records, val_fraction=0.2, seed=0)
    val_ids = {record.id for record in val}
    # Byte-identical images labelled differently: one near-duplicate group, one side of the split.
    assert ("benign (433)" in val_ids) == ("malignant (145)" in val_ids)
    assert not {r.group_key() for r in train} & {r.group_key() for r in val}
    assert 0.17 < len(val) / len(records) < 0.23


def test_real_items_through_the_dataset() -> None:
    busi = {record.id: record for record in read_busi(DATA / "busi")}
    busbra = read_busbra(DATA / "busbra")[:2]
    records = [busi["benign (100)"], busi["malignant (10)"], busi["normal (1)"], *busbra]
    for mode, expected in (("frame", 5), ("lesion", 6)):  # benign (100) has two lesion files
        dataset = MFFMTDataset(make_samples(records, mode=mode), train=True, size=(128, 128))
        assert len(dataset) == expected
        batch = torch.utils.data.default_collate([dataset[index] for index in range(len(dataset))])
        assert batch["image"].shape == batch["mask"].shape == (expected, 1, 128, 128)
        assert 0 <= batch["image"].min() and batch["image"].max() <= 1 and batch["image"].std() > 0.05
        assert batch["has_mask"].all() and not batch["mask_is_box"].any()
        normal = batch["id"].index("normal (1)")
        assert batch["label"][normal] == -1 and batch["mask"][normal].sum() == 0
        lesions = [index for index in range(expected) if index != normal]
        assert all(batch["mask"][index].sum() > 0 for index in lesions)
        assert batch["aux"]["birads"].tolist()[-2:] == [2, 2] and batch["scanner"][-1] == "GE Logiq 7 @10-14MHz"
