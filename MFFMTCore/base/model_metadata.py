"""The MFFMT model file's format marks and its metadata, read from the safetensors header alone.

A model file is a safetensors file (8-byte little-endian header length, then a JSON header whose
``__metadata__`` holds strings) with ``format`` = :data:`FORMAT`, ``format_version`` and ``info``,
the JSON of :class:`MFFMTCore.model_file.ModelInfo`. Reading the header needs neither torch nor the
weights, so model lists are fast and work before torch is installed; loading the weights (and
checking their checksum) is :func:`MFFMTCore.model_file.load_model`'s job.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from MFFMTCore.errors import MFFMTError

FORMAT = "mffmt-model"
FORMAT_VERSION = 2
MODEL_SUFFIX = ".safetensors"
#: The model that ships inside the package, in ``MFFMTCore/models/``.
DEFAULT_MODEL_NAME = "mffmt18_default.safetensors"
MODELS_FOLDER = Path(__file__).resolve().parents[1] / "models"
# A safetensors header describes tensors and metadata; anything this large is not a header.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class ModelFileError(MFFMTError):
    """A model file cannot be used. The message names the file and the problem."""


def default_model_path() -> Path | None:
    """The model shipped inside the package, or None when this installation has none."""
    path = MODELS_FOLDER / DEFAULT_MODEL_NAME
    return path if path.is_file() else None


def check_format(path: str | os.PathLike, metadata: dict[str, str]) -> int:
    """The format version of an MFFMT model file's metadata; refuses other files and newer formats.

    Raises:
        ModelFileError: another format, no usable format version, or a newer format version.
    """
    if metadata.get("format") != FORMAT:
        raise ModelFileError(path, f"not an MFFMT model file (format is {metadata.get('format')!r})")
    version = str(metadata.get("format_version", ""))
    if not version.isdigit() or int(version) < 1:
        raise ModelFileError(path, f"format_version {version!r} is not a format version")
    if int(version) > FORMAT_VERSION:
        raise ModelFileError(path, f"written by a newer MFFMTCore (format {version}); upgrade MFFMTCore")
    return int(version)


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file, read from its header only.

    Raises:
        ModelFileError: the file is missing, too short, or its header is not safetensors JSON.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFileError(path, "too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER_BYTES, os.fstat(handle.fileno()).st_size - 8):
                raise ModelFileError(path, f"not a safetensors file (header length {length} is impossible)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except FileNotFoundError as error:
        raise ModelFileError(path, "model file not found") from error
    except IsADirectoryError as error:
        raise ModelFileError(path, "is a folder, not a model file") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(path, f"not a safetensors file (header is not JSON: {error})") from error
    if not isinstance(header, dict):
        raise ModelFileError(path, "not a safetensors file (header is not a JSON object)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(path, "safetensors metadata is not a JSON object")
    return {str(key): str(value) for key, value in metadata.items()}


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ModelInfo of an MFFMT model file as a dict, from its header (the weights are not read).

    Raises:
        ModelFileError: not a readable MFFMT model file (the message names the file and the problem).
    """
    metadata = read_safetensors_metadata(path)
    check_format(path, metadata)
    try:
        info = json.loads(metadata.get("info", ""))
    except json.JSONDecodeError as error:
        raise ModelFileError(path, f"model metadata is not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise ModelFileError(path, "model metadata is not a JSON object")
    for key in ("architecture", "training", "validation"):  # model lists read titles and tooltips from these
        if not isinstance(info.get(key, {}), dict):
            raise ModelFileError(path, f"model metadata {key!r} is not a JSON object")
    return info


#: The parts of a model fitted on held-out data after training, as ``ModelInfo.fitted`` names them.
FITTED_PARTS = {"temperature": "temperature", "lesion_decision": "lesion-present rule",
                "input_check": "input-check statistics"}
#: ``status`` of a part in ``ModelInfo.fitted``.
FITTED, KEPT, NOT_FITTED = "fitted", "kept from parent", "not fitted"


def calibrated_parts(info: dict[str, Any]) -> dict[str, bool]:
    """Whether a model carries a temperature and a lesion-present rule (fitted, or kept from its parent).

    Args:
        info: the model's metadata (:func:`read_model_metadata`, or ``ModelInfo`` as a dict). A file
            from before ``fitted`` counts as calibrated where its values differ from "none" (the
            default model's were fitted by ``experiments/crossval.py``).
    """
    fitted = info.get("fitted") if isinstance(info.get("fitted"), dict) else {}

    def has(part: str, legacy: bool) -> bool:
        record = fitted.get(part)
        if isinstance(record, dict) and "status" in record:
            return record["status"] in (FITTED, KEPT)
        return legacy

    return {"temperature": has("temperature", info.get("temperature", 1.0) != 1.0),
            "lesion_decision": has("lesion_decision", bool(info.get("lesion_decision")))}


def calibration_note(info: dict[str, Any]) -> str | None:
    """None for a calibrated model (:func:`calibrated_parts`), else one line saying what is missing, for
    model lists, tooltips and ``mffmt predict``'s notes."""
    missing = [FITTED_PARTS[part] for part, present in calibrated_parts(info).items() if not present]
    if not missing:
        return None
    return (f"uncalibrated: no {' and no '.join(missing)} fitted on held-out data, so p(malignant) and "
            "lesion-present calls are the raw network's")
