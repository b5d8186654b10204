"""A training run's folder, ``RUN_DIR``: the names of its files, and reading and writing the plain ones.

``mffmt train`` writes, each atomically:

- ``config.json``: the effective options (:meth:`MFFMTCore.base.train_options.TrainOptions.to_json`);
  ``--resume`` starts from it;
- ``split.json``: which images the run trained and validated on (every record by
  :func:`~MFFMTCore.data.records.record_key` under "train" and "validation", plus how the split was
  made); ``--resume`` and ``mffmt evaluate --split`` read it back;
- ``checkpoint.pt``: the state after the last finished epoch (:mod:`MFFMTCore.training.checkpoint`);
- ``model.safetensors``: the best model so far (:mod:`MFFMTCore.model_file`);
- ``history.json``: one entry of losses and validation metrics per finished epoch;
- ``training_curves.png``: the history as a picture (:func:`MFFMTCore.evaluation.plots.plot_training_curves`);
- ``site_report.json`` and ``site_report.png``: written at the end of a run that started from a model
  (``--init-model``): the parent and the new model scored on the run's validation patients
  (:mod:`MFFMTCore.base.site_report` reads and words it; :mod:`MFFMTCore.evaluation.site_report`
  makes it);
- ``progress.jsonl``: one JSON event per line (:mod:`MFFMTCore.training.progress`); the Slicer module
  follows it;
- ``STOP``: not written by the run: its appearance stops the run at a safe point.

No torch: the Slicer module and the experiment scripts read run folders too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import write_json_atomic, write_text_atomic

CONFIG_NAME = "config.json"
SPLIT_NAME = "split.json"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.safetensors"
HISTORY_NAME = "history.json"
CURVES_NAME = "training_curves.png"
PROGRESS_NAME = "progress.jsonl"
SITE_REPORT_NAME = "site_report.json"
SITE_REPORT_PICTURE_NAME = "site_report.png"
STOP_NAME = "STOP"
#: The files that show a folder holds an earlier run, and that ``--overwrite`` removes. The progress
#: file is not one: alone it may be a run that stopped at a data error, and a new run appends to it.
RUN_FILES = (MODEL_NAME, CHECKPOINT_NAME, CONFIG_NAME, SPLIT_NAME, HISTORY_NAME, CURVES_NAME, SITE_REPORT_NAME,
             SITE_REPORT_PICTURE_NAME)


class RunFolder:
    """The files of the training run in ``path`` (each attribute is the path of one file).

    Args:
        path: the run folder (``--output`` of ``mffmt train``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_NAME
        self.split = self.path / SPLIT_NAME
        self.checkpoint = self.path / CHECKPOINT_NAME
        self.model = self.path / MODEL_NAME
        self.history = self.path / HISTORY_NAME
        self.curves = self.path / CURVES_NAME
        self.progress = self.path / PROGRESS_NAME
        self.site_report = self.path / SITE_REPORT_NAME
        self.site_report_picture = self.path / SITE_REPORT_PICTURE_NAME
        self.stop = self.path / STOP_NAME

    def earlier_run(self) -> list[str]:
        """The names of the :data:`RUN_FILES` the folder holds (empty: no earlier run)."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def remove_earlier_run(self) -> None:
        """Delete the :data:`RUN_FILES` of an earlier run (``--overwrite``)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def write_config(self, options: Any) -> None:
        """Write the effective options (anything with ``to_json()``, e.g. a ``TrainConfig``)."""
        write_text_atomic(self.config, options.to_json() + "\n")

    def read_split(self) -> dict[str, Any]:
        """This run's split (see :func:`read_split`)."""
        return read_split(self.split)

    def write_split(self, split: dict[str, Any]) -> None:
        """Write a split (see :func:`MFFMTCore.training.datasplit.describe_split`)."""
        write_json_atomic(self.split, split)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_json_atomic(self.history, history)


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """A run's split.json (in its run folder or copied elsewhere), its "train" and "validation" lists
    of record keys checked.

    Raises:
        MFFMTError: the file is missing or is not a run's split.json.
    """
    path = Path(path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        split["train"], split["validation"] = list(split["train"]), list(split["validation"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MFFMTError(path, f"not a run's split.json ({error})") from error
    return split
