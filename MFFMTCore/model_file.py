"""The MFFMT model file: one safetensors file holding the weights and everything needed to use them.

A model file is what ``mffmt train`` writes (``RUN_DIR/model.safetensors``), what ``mffmt evaluate``,
``mffmt predict`` and the Slicer module load, and what ships as the default model.

Layout: a standard safetensors file whose string metadata holds

- ``format`` = ``"mffmt-model"`` and ``format_version``;
- ``info``: JSON of :class:`ModelInfo` (architecture arguments, class names, input size, intensity
  normalisation, threshold, training data summary, validation metrics, software versions);
- ``sha256``: checksum of the weights (every tensor's name, dtype, shape and bytes, in name order)
  and of every other metadata entry, whatever its name (format 2; see :func:`model_checksum`).
  So a metadata field added later is covered without any change here, and an edited header
  (class names swapped, another threshold) is refused like damaged weights. Files of format 1
  (written before metadata was covered) have a weights-only checksum and still load.

Loading never unpickles anything: safetensors holds raw tensors and JSON only. A file whose checksum
does not match, whose metadata is missing or out of range, or whose weights do not fit the
architecture it declares, is refused with a :class:`ModelFileError` that names the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.model_metadata import (
    DEFAULT_MODEL_NAME,
    FORMAT,
    FORMAT_VERSION,
    MODEL_SUFFIX,
    ModelFileError,
    check_format,
    default_model_path,
)
from MFFMTCore.base.thresholds import threshold_problem
from MFFMTCore.files import atomic_path, describe_write_error
from MFFMTCore.version import __version__

#: The first format whose checksum covers the metadata too.
_METADATA_CHECKSUM_VERSION = 2
#: The only intensity normalisation the predictor and the datasets implement.
INTENSITIES = ("minmax",)
#: The network downsamples by this factor: input sizes must be multiples of it.
_INPUT_STRIDE = 32

__all__ = ["DEFAULT_MODEL_NAME", "FORMAT", "FORMAT_VERSION", "MODEL_SUFFIX", "ModelFileError", "ModelInfo",
           "copy_with_metadata", "default_model_path", "load_model", "read_model_info", "resolve_model_path",
           "save_model"]


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
        temperature: divides the class logits before the softmax (temperature scaling, fitted on
            validation so that p(malignant) means what it says); 1.0 leaves them as trained.
        lesion_decision: the frame-level lesion rule (:class:`MFFMTCore.base.lesion_decision.LesionDecision`
            as JSON); empty: any lesion pixel makes a lesion, as in files written before the rule.
        fitted: how ``temperature``, ``lesion_decision`` and the input-check statistics were obtained:
            per part, ``status`` ("fitted", "kept from parent" or "not fitted"), a one-line ``message``
            and the figures they were chosen on (:mod:`MFFMTCore.evaluation.model_fit`); empty in files
            written before ``mffmt train`` fitted them.
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
    temperature: float = 1.0
    lesion_decision: dict[str, float] = field(default_factory=dict)
    fitted: dict[str, Any] = field(default_factory=dict)
    name: str = "MFFMT"
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        """Parse and check the metadata JSON; unknown keys (from newer writers) are ignored.

        Raises:
            ValueError: not a JSON object, or a field is missing, of the wrong type or out of range.
        """
        try:
            values = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"model metadata 'info' is not JSON ({error})") from error
        if not isinstance(values, dict):
            raise ValueError("model metadata 'info' is not a JSON object")
        if "architecture" not in values:
            raise ValueError("model metadata has no 'architecture'")
        known = {name for name in cls.__dataclass_fields__}
        info = cls(**{key: value for key, value in values.items() if key in known})
        info.check()
        return info

    def check(self) -> None:
        """Check every field's type and range.

        Raises:
            ValueError: the first field that is wrong, named with its value.
        """

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not isinstance(self.architecture, dict) or not isinstance(self.architecture.get("backbone"), str):
            raise ValueError(f"architecture {self.architecture!r} is not an object naming a backbone")
        names = self.class_names
        if (not isinstance(names, list) or len(names) < 2 or len(set(map(str, names))) != len(names)
                or not all(isinstance(name, str) and name.strip() for name in names)):
            raise ValueError(f"class_names {names!r} must be two or more different names")
        classes = self.architecture.get("num_classes", 2)
        if classes != len(names):
            raise ValueError(f"class_names {names!r} do not match the network's {classes} class outputs")
        size = self.input_size
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(side, int) and side > 0 and side % _INPUT_STRIDE == 0 for side in size)):
            raise ValueError(f"input_size {size!r} must be two positive multiples of {_INPUT_STRIDE}")
        if self.intensity not in INTENSITIES:
            raise ValueError(f"intensity normalisation {self.intensity!r} is not supported ({', '.join(INTENSITIES)})")
        if threshold_problem(self.threshold) is not None:
            raise ValueError(f"threshold {threshold_problem(self.threshold)}")
        if not number(self.temperature) or not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature!r} must be a positive number")
        if not isinstance(self.lesion_decision, dict):
            raise ValueError(f"lesion_decision {self.lesion_decision!r} is not an object")
        LesionDecision.from_json(self.lesion_decision)  # ValueError naming the wrong entry
        for key in ("name", "created"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} {getattr(self, key)!r} is not a string")
        for key in ("fitted", "training", "validation", "software"):
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"{key} {getattr(self, key)!r} is not an object")


def weights_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def model_checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the weights (:func:`weights_checksum`) and every metadata entry but ``sha256``.

    The entries are taken by name, in sorted order, so any entry added later is covered too.
    """
    digest = hashlib.sha256(weights_checksum(tensors).encode())
    covered = {key: value for key, value in metadata.items() if key != "sha256"}
    digest.update(json.dumps(covered, sort_keys=True, ensure_ascii=True, allow_nan=False).encode())
    return digest.hexdigest()


def _software_versions() -> dict[str, str]:
    # MONAI's version from its installed metadata: importing it (2 s) is for training's data pipeline only.
    monai_version = importlib.metadata.version("monai")
    return {"MFFMTCore": __version__, "torch": torch.__version__.split("+")[0], "monai": monai_version}


def save_model(path: str | os.PathLike, model: torch.nn.Module, info: ModelInfo, half: bool = False,
               entries: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights and ``info`` to ``path`` atomically.

    Args:
        path: destination, conventionally ending in ``.safetensors``.
        model: an MFFMT network built from ``info.architecture``.
        info: metadata; ``software`` and ``created`` are filled in here.
        half: store floating-point weights as float16 (half the size; loaded back as float32).
        entries: further metadata entries (e.g. the input-check statistics), covered by the checksum.

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
    info.check()
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "info": info.to_json()}
    reserved = sorted(set(entries or {}) & {*metadata, "sha256"})
    if reserved:
        raise ModelFileError(path, f"metadata entries {', '.join(reserved)} belong to the model format")
    return _write_signed(Path(path), tensors, {**(entries or {}), **metadata})


def _write_signed(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` and ``metadata`` atomically with the checksum over both."""
    metadata = {key: value for key, value in metadata.items() if key != "sha256"}
    metadata["sha256"] = model_checksum(tensors, metadata)
    with atomic_path(path) as temporary:
        try:
            save_file(tensors, str(temporary), metadata=metadata)
        except (SafetensorError, OSError) as error:  # e.g. a full disk
            raise ModelFileError(path, f"cannot be written ({describe_write_error(temporary, error)})") from error
    return path


def copy_with_metadata(source: str | os.PathLike, output: str | os.PathLike, entries: dict[str, str]) -> Path:
    """Write a copy of the model file ``source`` with extra metadata ``entries`` (e.g. input-check statistics),
    signed anew; the source is verified first, so a damaged or edited file is never re-signed.

    Raises:
        ModelFileError: ``source`` is not a valid model file, ``output`` is ``source`` itself (a model
            file is never overwritten in place), an entry would replace one of the format's own, or
            ``output`` cannot be written.
    """
    source, output = Path(source), Path(output)
    if output.exists() and output.resolve() == source.resolve():
        raise ModelFileError(output, "refusing to overwrite the model file it is made from; give another output")
    metadata, tensors, _ = _read_verified(source)
    reserved = sorted(set(entries) & {"format", "format_version", "info", "sha256"})
    if reserved:
        raise ModelFileError(output, f"metadata entries {', '.join(reserved)} belong to the model format")
    return _write_signed(output, tensors, {**metadata, **entries})


def _read_verified(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor], ModelInfo]:
    """(metadata, tensors, info) of a model file whose checksum and metadata fields are correct."""
    if not path.is_file():
        raise ModelFileError(path, "model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            version = check_format(path, metadata)  # before the weights are read: they may be large
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(path, f"not a readable safetensors model file ({error})") from error
    expected = (model_checksum(tensors, metadata) if version >= _METADATA_CHECKSUM_VERSION
                else weights_checksum(tensors))
    if metadata.get("sha256") != expected:
        raise ModelFileError(path, "checksum mismatch: the weights or the metadata were changed, "
                                   "or the file is damaged")
    if "info" not in metadata:
        raise ModelFileError(path, "model metadata has no 'info'")
    try:
        info = ModelInfo.from_json(metadata["info"])
    except ValueError as error:
        raise ModelFileError(path, str(error)) from error
    return metadata, tensors, info


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read a model file's metadata, after checking its checksum and every field (for model lists).

    Raises:
        ModelFileError: as :func:`load_model`, except for weights that do not fit the architecture.
    """
    return _read_verified(Path(path))[2]


def read_model_checksum(path: str | os.PathLike) -> str:
    """The checksum a model file declares (weights and metadata), which identifies its answers.

    Reads the header only: use it for a file :func:`load_model` has just verified.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            return str((handle.metadata() or {}).get("sha256", ""))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(path, f"not a readable safetensors model file ({error})") from error


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Load a model file safely and return the network (in eval mode, float32) and its info.

    Raises:
        ModelFileError: the file is missing, not a model file, its checksum does not match (it was
            changed or damaged), a metadata field is missing or out of range, or its weights do not
            fit the architecture it declares.
    """
    from MFFMTCore.network import MFFMT

    path = Path(path)
    _, tensors, info = _read_verified(path)
    try:
        # Not on the meta device: its random initialisation (normal_) imports torch._dynamo, 1.2 s.
        model = MFFMT(**info.architecture)
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFileError(path, f"architecture {info.architecture} is not understood ({error})") from error
    reference = model.state_dict()
    # The file's tensors become the parameters (assign below, no second copy), each copied into torch's
    # own aligned memory first: the file reader's buffers gave class logits 6e-8 apart.
    tensors = {
        name: tensor.to(reference[name].dtype, copy=True) if name in reference else tensor
        for name, tensor in tensors.items()
    }
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
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
