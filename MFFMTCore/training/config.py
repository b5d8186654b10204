"""The effective configuration of a training run: preset < config file < command line.

Every option of ``mffmt train`` is a field of :class:`TrainConfig` (the option name with
underscores), declared once in :mod:`MFFMTCore.base.train_options`. A JSON config file holds any
subset of these fields; the command line overrides it; the preset fills the recipe values neither
gives. The merged configuration is written to
``RUN_DIR/config.json`` so that a run can be repeated and resumed exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from MFFMTCore.base.presets import preset_values
from MFFMTCore.base.train_options import OPTIONS, TrainOptions
from MFFMTCore.errors import MFFMTError


@dataclass
class TrainConfig(TrainOptions):
    """Everything a training run needs: the options of :class:`MFFMTCore.base.train_options.TrainOptions`
    (their declaration: types, defaults, ranges, choices, help), with the preset's values filled in by
    :meth:`resolved`."""

    def resolved(self) -> TrainConfig:
        """A copy with the preset's values filled in and every value checked.

        Raises:
            MFFMTError: a value is out of range or unknown; the message names the option.
        """
        values = asdict(self)
        for key, value in preset_values(self.preset, self.backbone).items():
            if values[key] is None:
                values[key] = value
        config = TrainConfig(**values)
        config.check()
        return config

    def architecture(self, aux_classes: dict[str, int] | None) -> dict[str, Any]:
        """Keyword arguments of :class:`MFFMTCore.network.MFFMT` for this run."""
        return {"backbone": self.backbone, "in_channels": 1, "num_classes": 2, "fusion": self.fusion,
                "use_ca": self.use_ca, "use_cbam": self.use_cbam, "decoder": self.decoder,
                "embed_dim": self.embed_dim, "mlp_ratio": self.mlp_ratio, "aux_classes": aux_classes or None}


#: The options that name a single file or folder (``data`` is a list of them).
PATH_OPTIONS = tuple(name for name, declared in OPTIONS.items() if declared.path and declared.kind is str)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON config file whose keys are :class:`TrainConfig` fields.

    Keys starting with "_" are comments. Relative paths (``data`` and the other path options) are
    taken relative to the config file, so a config kept in the repository works from any working
    folder. Values are checked when the configuration is resolved.

    Raises:
        MFFMTError: the file is missing, not JSON, not an object, or has an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise MFFMTError(path, "config file not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MFFMTError(path, f"not a JSON file ({error})") from error
    if not isinstance(values, dict):
        raise MFFMTError(path, "a config file must hold one JSON object of option names and values")
    values = {key: value for key, value in values.items() if not key.startswith("_")}  # "_comment" etc.
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise MFFMTError(path, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}")

    def relative(value: str) -> str:
        return str((path.parent / value).resolve()) if not os.path.isabs(value) else value

    if isinstance(values.get("data"), str):
        values["data"] = [values["data"]]
    if isinstance(values.get("data"), list):
        values["data"] = [relative(item) if isinstance(item, str) else item for item in values["data"]]
    for key in PATH_OPTIONS:
        if isinstance(values.get(key), str) and values[key]:
            values[key] = relative(values[key])
    return values


def merge_config(*layers: dict[str, Any]) -> TrainConfig:
    """Build a config from layers of values, later layers winning; None values do not override."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({key: value for key, value in layer.items() if value is not None})
    return TrainConfig(**values)
