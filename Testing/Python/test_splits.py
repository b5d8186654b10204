"""Group-aware splits: no group on both sides, deterministic, stratified; k-fold covers every record once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from test_data_synthetic import make_busbra

from MFFMTCore.data import SampleRecord, busbra_official_folds, group_kfold, split_by_group


def make_records() -> list[SampleRecord]:
    """300 records: BUSI-like groups of 1-4 near-duplicates (some mixing labels) and BUS-BRA-like patients."""
    records = []
    for number in range(200):
        label = ("benign", "malignant", "normal")[number % 3 if number % 5 else 0]
        group = f"busi:g{number // 3}" if number < 120 else None  # the rest: each image its own group
        records.append(SampleRecord(id=f"i{number}", image=f"{number}.png", label=label, group=group, dataset="BUSI"))
    for number in range(100):
        label = "malignant" if (number // 2) % 3 == 0 else "benign"
        records.append(SampleRecord(id=f"b{number}", image=f"b{number}.png", label=label,
                                    group=f"busbra:{number // 2}", dataset="BUS-BRA"))
    return records


def assert_no_straddle(train: list[SampleRecord], val: list[SampleRecord]) -> None:
    assert not {record.group_key() for record in train} & {record.group_key() for record in val}


def test_split_keeps_groups_whole_and_is_stratified() -> None:
    records = make_records()
    train, val = split_by_group(records, val_fraction=0.2, seed=3)
    assert_no_straddle(train, val)
    assert len(train) + len(val) == len(records) and {r.id for r in train} | {r.id for r in val} == {r.id for r in records}
    total = Counter((r.dataset, r.label) for r in records)
    in_val = Counter((r.dataset, r.label) for r in val)
    for stratum, count in total.items():
        assert abs(in_val[stratum] - 0.2 * count) <= 2, (stratum, in_val[stratum], count)


def test_split_is_deterministic_and_depends_on_seed() -> None:
    records = make_records()
    ids = lambda part: [r.id for r in part]  # noqa: E731
    assert ids(split_by_group(records, 0.25, seed=1)[1]) == ids(split_by_group(records, 0.25, seed=1)[1])
    assert ids(split_by_group(records, 0.25, seed=1)[1]) != ids(split_by_group(records, 0.25, seed=2)[1])


def test_split_refuses_what_it_cannot_do() -> None:
    one_group = [SampleRecord(id=str(n), image="x.png", label="benign", group="p", dataset="d") for n in range(5)]
    with pytest.raises(ValueError, match="cannot split"):
        split_by_group(one_group)
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_group(make_records(), val_fraction=1.0)


def test_group_kfold_covers_each_record_once() -> None:
    records = make_records()
    folds = group_kfold(records, k=5, seed=0)
    assert len(folds) == 5
    seen = Counter(record.id for _, val in folds for record in val)
    assert set(seen) == {record.id for record in records} and set(seen.values()) == {1}
    for train, val in folds:
        assert_no_straddle(train, val)
        assert len(train) + len(val) == len(records)
        assert abs(len(val) - len(records) / 5) <= 4
    with pytest.raises(ValueError, match="k must be"):
        group_kfold(records[:3], k=5)


def test_busbra_official_folds(tmp_path: Path) -> None:
    rows = [{"ID": f"bus_000{n}-l", "Case": str(n), "Pathology": "benign", "BBOX": "[1, 1, 2, 2]"} for n in range(1, 5)]
    root = make_busbra(tmp_path, rows)
    (root / "5-fold-cv.csv").write_text("ID,Pathology,kFold\n" + "".join(
        f"bus_000{n}-l,benign,{1 + n % 2}\n" for n in range(1, 5)))
    folds = busbra_official_folds(root)
    assert [[r.id for r in val] for _, val in folds] == [["bus_0002-l", "bus_0004-l"], ["bus_0001-l", "bus_0003-l"]]
