"""Train/validation splits that never put one near-duplicate group or patient on both sides.

BUSI holds many near-duplicate images and BUS-BRA several images per patient: splitting by image
would let a copy of a validation image sit in training and inflate every figure. The split unit is
:meth:`SampleRecord.group_key`, joined with every other record of the same image content (the same
file under another name, or in another datalist, whatever its group); whole units are assigned
greedily so that each (dataset, label) stratum gets close to its share, and the same seed always
gives the same split.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from MFFMTCore.data.readers import read_busbra, read_csv_table
from MFFMTCore.data.records import DatasetError, SampleRecord, content_key
from MFFMTCore.errors import MFFMTError

Split = tuple[list[SampleRecord], list[SampleRecord]]


def _stratum(record: SampleRecord) -> tuple[str, str]:
    return record.dataset, record.label or ""


def _units(records: list[SampleRecord]) -> list[list[int]]:
    """Record indices by split unit: records that share a group, or an image (:func:`content_key`:
    the same file under two names or in two datalists), are in one unit."""
    parent = list(range(len(records)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first: dict[str, int] = {}
    for index, record in enumerate(records):
        for key in (f"group:{record.group_key()}", content_key(record)):
            if key in first:
                parent[root(index)] = root(first[key])
            else:
                first[key] = index
    members: dict[int, list[int]] = {}
    for index in range(len(records)):
        members.setdefault(root(index), []).append(index)
    return list(members.values())


def _ordered_groups(records: list[SampleRecord], seed: int) -> list[list[int]]:
    """Record indices by split unit (:func:`_units`): shuffled by ``seed``, then largest first (big
    groups are placed while there is still room to balance around them)."""
    groups = _units(records)
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    return groups


def _deviation_increase(counts: Counter, added: Counter, target: dict[tuple[str, str], float]) -> float:
    """How much adding ``added`` to ``counts`` increases the squared distance to ``target``."""
    return sum((counts[key] + number - target[key]) ** 2 - (counts[key] - target[key]) ** 2
               for key, number in added.items())


def _partition(records: list[SampleRecord], fold_of: list[int], folds: int) -> list[Split]:
    """(train, validation) lists for each fold, records in their original order."""
    return [([record for record, f in zip(records, fold_of) if f != fold],
             [record for record, f in zip(records, fold_of) if f == fold]) for fold in range(folds)]


def check_sides_apart(train: list[SampleRecord], val: list[SampleRecord]) -> None:
    """Refuse a given split (a datalist's own sections) that holds one image on both sides.

    Raises:
        DatasetError: naming the validation image and the training record of the same content.
    """
    in_train = {content_key(record): record for record in train}
    for record in val:
        twin = in_train.get(content_key(record))
        if twin is not None:
            raise DatasetError(record.image, f"is a validation image and also a training image (as {twin.image}, "
                                             "same content); a split must keep each image on one side")


def split_by_group(records: list[SampleRecord], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split records into training and validation by group, stratified by dataset and label.

    Args:
        records: the records to split.
        val_fraction: share of each (dataset, label) stratum to aim for in validation, in [0, 1).
        seed: the same seed gives the same split.

    Returns:
        (train, val), each in the records' original order; no group has members in both.

    Raises:
        MFFMTError: ``val_fraction`` out of range, or too few groups to give both sides a record.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise MFFMTError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    total = Counter(_stratum(record) for record in records)
    target = {key: val_fraction * number for key, number in total.items()}
    in_val = [0] * len(records)
    val_counts: Counter = Counter()
    for group in _ordered_groups(records, seed):
        added = Counter(_stratum(records[index]) for index in group)
        if _deviation_increase(val_counts, added, target) < 0:
            val_counts.update(added)
            for index in group:
                in_val[index] = 1
    train, val = _partition(records, in_val, 2)[1]
    if val_fraction > 0 and (not train or not val):
        raise MFFMTError("val_fraction", f"cannot split {len(records)} records in "
                         f"{len(_ordered_groups(records, seed))} groups into training and validation "
                         f"(val_fraction {val_fraction})")
    return train, val


def group_kfold(records: list[SampleRecord], k: int = 5, seed: int = 0) -> list[Split]:
    """K-fold cross-validation by group, each fold stratified by dataset and label.

    Args:
        records: the records to split.
        k: number of folds (at least 2, at most the number of groups).
        seed: the same seed gives the same folds.

    Returns:
        ``k`` pairs (train, val); every record is in exactly one validation fold.
    """
    groups = _ordered_groups(records, seed)
    if not 2 <= k <= len(groups):
        raise ValueError(f"k must be between 2 and the number of groups ({len(groups)}), got {k}")
    total = Counter(_stratum(record) for record in records)
    target = {key: number / k for key, number in total.items()}
    fold_counts = [Counter() for _ in range(k)]
    fold_sizes = [0] * k
    fold_of = [0] * len(records)
    for group in groups:
        added = Counter(_stratum(records[index]) for index in group)
        # Best balance first; ties go to the smallest fold so fold sizes stay even.
        fold = min(range(k), key=lambda f: (_deviation_increase(fold_counts[f], added, target), fold_sizes[f]))
        fold_counts[fold].update(added)
        fold_sizes[fold] += len(group)
        for index in group:
            fold_of[index] = fold
    return _partition(records, fold_of, k)


def busbra_official_folds(root: str | os.PathLike) -> list[Split]:
    """BUS-BRA's published patient-level folds, from ``5-fold-cv.csv`` (column kFold).

    Returns:
        One (train, val) pair per fold present, in fold order; the records are :func:`read_busbra`'s.

    Raises:
        DatasetError: the fold file is missing, or an image has no fold.
    """
    root = Path(root)
    table = root / "5-fold-cv.csv"
    if not table.is_file():
        raise DatasetError(root, "5-fold-cv.csv not found")
    folds = {row["ID"].strip(): row["kFold"].strip() for row in read_csv_table(table, required=("ID", "kFold"))}
    records = read_busbra(root)
    missing = [record.id for record in records if not folds.get(record.id)]
    if missing:
        raise DatasetError(table, f"{len(missing)} images have no fold, e.g. {', '.join(missing[:5])}")
    names = sorted({folds[record.id] for record in records}, key=lambda name: (len(name), name))
    fold_of = [names.index(folds[record.id]) for record in records]
    return _partition(records, fold_of, len(names))
