"""The training and validation records of a run, and ``RUN_DIR/split.json`` that fixes them.

Datasets given to ``mffmt train`` are read with :func:`MFFMTCore.data.read_dataset`. A datalist
with a ``validation`` section keeps its own split; every other record is split by near-duplicate
group and patient (:func:`MFFMTCore.data.split_by_group`), so no group straddles the two sides.
``split.json`` lists every record by key; ``--resume`` reads it back, so a resumed run validates
on exactly the same images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from MFFMTCore.base.run_folder import read_split
from MFFMTCore.data import (
    DatasetError,
    SampleRecord,
    read_datalist_sections,
    read_dataset,
    record_key,
    split_by_group,
    summarize,
)
from MFFMTCore.data.splits import check_sides_apart


def read_training_records(paths: list[str]) -> tuple[list[SampleRecord], list[SampleRecord], list[SampleRecord]]:
    """Read every dataset.

    Returns:
        (records to split by group, records fixed for training, records fixed for validation); the
        fixed ones come from datalists that have a ``validation`` section.

    Raises:
        DatasetError: a dataset cannot be read, two records share a key, or a datalist's validation
            section holds an image also given for training.
    """
    pooled: list[SampleRecord] = []
    fixed_train: list[SampleRecord] = []
    fixed_val: list[SampleRecord] = []
    for path in paths:
        sections = read_datalist_sections(path) if str(path).lower().endswith(".json") else {}
        if sections.get("validation"):
            fixed_train += sections.get("training", [])
            fixed_val += sections["validation"]
        else:
            pooled += read_dataset(path)
    seen: dict[str, str] = {}
    for record in pooled + fixed_train + fixed_val:
        key = record_key(record)
        if key in seen:
            raise DatasetError(record.image, f"image {key} is listed twice (also as {seen[key]}); "
                                             "give each dataset once")
        seen[key] = record.image
    check_sides_apart(pooled + fixed_train, fixed_val)
    return pooled, fixed_train, fixed_val


def plan_split(paths: list[str], val_fraction: float, seed: int) -> tuple[list[SampleRecord], list[SampleRecord],
                                                                         dict[str, Any]]:
    """Read the datasets and split them into training and validation records.

    Returns:
        (train, val, split description for ``split.json``).
    """
    pooled, train, val = read_training_records(paths)
    if pooled:
        pooled_train, pooled_val = split_by_group(pooled, val_fraction=val_fraction, seed=seed)
        train, val = train + pooled_train, val + pooled_val
    if not train or not val:
        raise DatasetError(", ".join(paths), f"cannot form both a training and a validation set "
                                             f"({len(train)} and {len(val)} images)")
    method = "group" if pooled else "datalist"
    return train, val, describe_split(train, val, method, val_fraction, seed)


def describe_split(train: list[SampleRecord], val: list[SampleRecord], method: str, val_fraction: float,
                   seed: int) -> dict[str, Any]:
    """The content of ``split.json``: how the split was made, its size, and every record's key."""
    return {
        "method": method, "val_fraction": val_fraction, "seed": seed,
        "train_groups": len({record.group_key() for record in train}),
        "val_groups": len({record.group_key() for record in val}),
        "summary": {"train": summarize(train), "validation": summarize(val)},
        "train": [record_key(record) for record in train],
        "validation": [record_key(record) for record in val],
    }


def restore_split(paths: list[str], split_path: str | os.PathLike) -> tuple[list[SampleRecord], list[SampleRecord],
                                                                            dict[str, Any]]:
    """Read the datasets again and rebuild the split recorded in ``split_path``.

    Raises:
        MFFMTError: ``split.json`` is missing or damaged; DatasetError: it names images the datasets no
            longer hold.
    """
    split_path = Path(split_path)
    split = read_split(split_path)
    keys = {"train": split["train"], "validation": split["validation"]}
    pooled, fixed_train, fixed_val = read_training_records(paths)
    by_key = {record_key(record): record for record in pooled + fixed_train + fixed_val}
    missing = [key for key in keys["train"] + keys["validation"] if key not in by_key]
    if missing:
        raise DatasetError(split_path, f"{len(missing)} images of the run's split are not in the data given "
                                       f"(e.g. {', '.join(missing[:3])}); resume with the same --data")
    return [by_key[key] for key in keys["train"]], [by_key[key] for key in keys["validation"]], split
