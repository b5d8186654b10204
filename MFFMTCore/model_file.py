"""The MFFMT model file: one safetensors file holding the weights and everything needed to use them.

A model file is what ``mffmt train`` writes (``RUN_DIR/model.safetensors``), what ``mffmt evaluate``,
``mffmt predict`` and the Slicer module load, and what ships as the default model.

Layout: a standard safetensors file whose string metadata holds

- ``format`` = ``"mffmt-model"`` and ``format_version``;
- ``info``: JSON of :class:`ModelInfo` (architecture arguments, class names, input size, intensity
  normalisation, threshold, training data summary, validation metrics, software versions);
- ``sha256``: checksum of the weights (every tensor's name, dtype, shape and bytes, in name order).

Loading never unpickles anything: safetensors holds raw tensors and JSON only. A file whose checksum
does not match, or whose weights do not fit the architecture it declares, is refused with a
:class:`ModelFileError` that names the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from MFFMTCore.base.model_metadata import (
    DEFAULT_MODEL_NAME,
    FORMAT,
    FORMAT_VERSION,
    ModelFileError,
    check_format,
    default_model_path,
)
from MFFMTCore.io import atomic_path
from MFFMTCore.version import __version__


@dataclass
class ModelInfo:
    """Everything besides the weights that a user of a model needs.

    Args:
        architecture: keyword arguments of :class:`MFFMTCore.network.MFFMT`.
        class_names: names of the class logits, in order (the last is the positive class).
        input_size: (height, width) the network sees.
        intensity: how pixel values are scaled before the network: ``"minmax"`` maps each frame's
            minimum and maximum to 0 and 1.
        threshold: default probability threshold for the lesion map.
        name: short human-readable name.
        training: summary of the training data and recipe.
        validation: validation metrics of this model.
        software: versions of the software that wrote the file.
        created: ISO-8601 time of writing.
    """

    architecture: dict[str, Any]
    class_names: list[str] = field(default_factory=lambda: ["benign", "malignant"])
    input_size: list[int] = field(default_factory=lambda: [256, 256])
    intensity: str = "minmax"
    threshold: float = 0.5
    name: str = "MFFMT"
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        values = json.loads(text)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in values.items() if key in known})


def weights_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _software_versions() -> dict[str, str]:
    import monai

    return {"MFFMTCore": __version__, "torch": torch.__version__.split("+")[0], "monai": monai.__version__}


def save_model(path: str | os.PathLike, model: torch.nn.Module, info: ModelInfo, half: bool = False) -> Path:
    """Write ``model``'s weights and ``info`` to ``path`` atomically.

    Args:
        path: destination, conventionally ending in ``.safetensors``.
        model: an MFFMT network built from ``info.architecture``.
        info: metadata; ``software`` and ``created`` are filled in here.
        half: store floating-point weights as float16 (half the size; loaded back as float32).

    Returns:
        The path written.
    """
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor
    info.software = _software_versions()
    info.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "info": info.to_json(),
        "sha256": weights_checksum(tensors),
    }
    path = Path(path)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ModelFileError(path, "model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(path, f"not a readable safetensors model file ({error})") from error
    check_format(path, metadata)
    return metadata


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read a model file's metadata without loading its weights (fast; for model lists)."""
    path = Path(path)
    return ModelInfo.from_json(_read_metadata(path)["info"])


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Load a model file safely and return the network (in eval mode, float32) and its info.

    Raises:
        ModelFileError: the file is missing, not a model file, its checksum does not match (it was
            changed or damaged), or its weights do not fit the architecture it declares.
    """
    from MFFMTCore.network import MFFMT

    path = Path(path)
    metadata = _read_metadata(path)
    info = ModelInfo.from_json(metadata["info"])
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(path, f"weights cannot be read ({error})") from error
    if weights_checksum(tensors) != metadata.get("sha256"):
        raise ModelFileError(path, "checksum mismatch: the weights were changed or the file is damaged")
    try:
        model = MFFMT(**info.architecture)
    except TypeError as error:
        raise ModelFileError(path, f"architecture {info.architecture} is not understood ({error})") from error
    reference = model.state_dict()
    tensors = {
        name: tensor.to(reference[name].dtype) if name in reference else tensor for name, tensor in tensors.items()
    }
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0:3]
        raise ModelFileError(path, f"weights do not fit the declared architecture: {' '.join(first)}") from error
    model.to(device).eval()
    return model, info


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """``path`` itself, or the default model when ``path`` is None.

    Raises:
        ModelFileError: no path was given and no default model is installed; says what to do.
    """
    if path is not None:
        return Path(path)
    default = default_model_path()
    if default is None:
        raise ModelFileError(
            Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME,
            "no default model is installed; pass a model file with --model "
            "(train one with `mffmt train --data DATA --output RUN_DIR`, then use RUN_DIR/model.safetensors)",
        )
    return default
