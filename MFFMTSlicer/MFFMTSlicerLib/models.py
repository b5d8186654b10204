"""The models folder: which MFFMT model files the user can choose, with their metadata.

Listing reads only each file's metadata header (:mod:`MFFMTCore.base.model_metadata`:
architecture, class names, input size, threshold, training summary, validation metrics): no torch
in Slicer's process and no weights read, so the list is quick and works before torch is installed.
The checksum over weights and metadata is verified where the weights are read, by the worker when
it loads the model; a file that fails there is listed as unusable with the worker's reason
(``ModelRegistry(unusable=...)``).

New models (trained in Slicer, or added with "Add model file...") are copied into the folder
atomically and never replace an existing file; the default model that ships with the extension
is listed first and never written.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from MFFMTCore.base.model_metadata import MODEL_SUFFIX, calibration_note, read_model_metadata


@dataclass
class ModelEntry:
    """One model the user can choose.

    Args:
        path: the model file.
        info: its ModelInfo as a dict (empty when it cannot be read).
        is_default: the model that ships with the extension.
        error: why the file cannot be used, or None.
    """

    path: Path
    info: dict[str, Any]
    is_default: bool = False
    error: str | None = None

    @property
    def backbone(self) -> str:
        return str(self.info.get("architecture", {}).get("backbone", "?"))

    @property
    def threshold(self) -> float | None:
        value = self.info.get("threshold")
        return float(value) if isinstance(value, (int, float)) else None

    def title(self) -> str:
        """Text for the model selector, e.g. "my_model (resnet18, val AUC 0.912)"."""
        name = f"Default model ({self.path.stem})" if self.is_default else self.path.stem
        if self.error:
            return f"{name} (unusable)"
        details = [self.backbone]
        auc = self.info.get("validation", {}).get("auc", self.info.get("validation", {}).get("val_auc"))
        if isinstance(auc, (int, float)) and math.isfinite(auc):
            details.append(f"val AUC {auc:.3f}")
        if calibration_note(self.info) is not None:
            details.append("uncalibrated")
        return f"{name} ({', '.join(details)})"

    def description(self) -> str:
        """Several lines for a tooltip: file, architecture, training data, metrics, date."""
        if self.error:
            return f"{self.path}\n{self.error}"
        lines = [str(self.path), f"Name: {self.info.get('name', '')}", f"Backbone: {self.backbone}",
                 f"Input size: {self.info.get('input_size')}", f"Threshold: {self.info.get('threshold')}"]
        for title, key in (("Training", "training"), ("Validation", "validation")):
            values = self.info.get(key) or {}
            if values:
                lines.append(f"{title}: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(values.items())))
        if self.info.get("created"):
            lines.append(f"Created: {self.info['created']}")
        note = calibration_note(self.info)
        lines.append(f"Calibration: {note}" if note else "Calibration: temperature and lesion rule fitted on held-out data")
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def safe_model_filename(name: str) -> str:
    """A file name stem for a model called ``name``: letters, digits, ``.``, ``_`` and ``-`` only."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    if stem.lower().endswith(MODEL_SUFFIX):
        stem = stem[: -len(MODEL_SUFFIX)]
    return stem or "model"


class ModelRegistry:
    """The models a user can choose: the shipped default model, then the files of a models folder.

    Args:
        folder: the models folder (created when a model is added).
        default_model: the model that ships with the extension, or None.
        unusable: why a model file could not be loaded, or None (the worker's verdict: its header
            reads, but its checksum or weights failed when the worker loaded it).
    """

    def __init__(self, folder: str | os.PathLike, default_model: str | os.PathLike | None = None,
                 unusable: Callable[[Path], str | None] | None = None):
        self.folder = Path(folder)
        self.default_model = Path(default_model) if default_model is not None else None
        self.unusable = unusable

    def _entry(self, path: Path, is_default: bool) -> ModelEntry:
        try:
            info = read_model_metadata(path)
        except (ValueError, OSError) as error:
            return ModelEntry(path, {}, is_default, error=str(error))
        return ModelEntry(path, info, is_default, error=self.unusable(path) if self.unusable else None)

    def entries(self) -> list[ModelEntry]:
        """The default model first (when installed), then the folder's models by name."""
        entries = []
        if self.default_model is not None and self.default_model.is_file():
            entries.append(self._entry(self.default_model, True))
        if self.folder.is_dir():
            files = sorted(self.folder.glob("*" + MODEL_SUFFIX), key=lambda p: p.name.lower())
            default = self.default_model.resolve() if self.default_model is not None else None
            entries += [self._entry(path, False) for path in files if path.resolve() != default]
        return entries

    def find(self, path: str | os.PathLike) -> ModelEntry | None:
        """The entry of ``path``, or None when it is not listed."""
        wanted = Path(path).resolve()
        return next((entry for entry in self.entries() if entry.path.resolve() == wanted), None)

    def add(self, source: str | os.PathLike, name: str | None = None) -> Path:
        """Copy a model file into the folder under ``name`` (default: its own name) and return the new path.

        The copy is checked to be an MFFMT model (its header: the weights' checksum is verified when
        the worker loads it), written under a temporary name and then linked to
        its final name, so the folder never shows a half-written model and an existing model is
        never replaced: "name.safetensors" becomes "name-2.safetensors" when the name is taken.

        Raises:
            ValueError: ``source`` is not a readable MFFMT model file.
        """
        source = Path(source)
        read_model_metadata(source)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = safe_model_filename(name if name else source.stem)
        handle, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=self.folder)
        os.close(handle)
        temporary = Path(temporary)
        try:
            shutil.copyfile(source, temporary)
            read_model_metadata(temporary)  # the copy is complete and readable
            for number in range(1, 10000):
                target = self.folder / (f"{stem}{MODEL_SUFFIX}" if number == 1 else f"{stem}-{number}{MODEL_SUFFIX}")
                if _place_without_overwrite(temporary, target):
                    return target
            raise ValueError(f"{self.folder}: too many models named {stem}")
        finally:
            temporary.unlink(missing_ok=True)


def _place_without_overwrite(temporary: Path, target: Path) -> bool:
    """Give ``temporary`` the name ``target`` unless that name exists; True when placed."""
    try:
        os.link(temporary, target)  # atomic, and fails when target exists
        return True
    except FileExistsError:
        return False
    except OSError:
        # File systems without hard links: check, then rename (a narrow race, never a partial file).
        if target.exists():
            return False
        os.replace(temporary, target)
        return True
