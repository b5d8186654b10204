"""``RUN_DIR/split.json``: which images a training run trained and validated on.

``mffmt train`` writes it (every record by :func:`~MFFMTCore.data.records.record_key`, under
"train" and "validation", plus how the split was made); ``--resume`` and ``mffmt evaluate --split``
read it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from MFFMTCore.data.records import DatasetError
from MFFMTCore.files import write_json_atomic

SPLIT_FILE = "split.json"


def write_split(path: str | os.PathLike, split: dict[str, Any]) -> None:
    """Write a split (see :func:`MFFMTCore.training.datasplit.describe_split`) atomically."""
    write_json_atomic(path, split)


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """A run's split, with its "train" and "validation" lists of record keys checked.

    Raises:
        DatasetError: the file is missing or is not a run's split.json.
    """
    path = Path(path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        split["train"], split["validation"] = list(split["train"]), list(split["validation"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetError(path, f"not a run's split.json ({error})") from error
    return split
