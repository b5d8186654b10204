"""The effective configuration of a training run: preset < config file < command line.

Every option of ``mffmt train`` is a field of :class:`TrainConfig` (the option name with
underscores). A JSON config file holds any subset of these fields; the command line overrides it;
the preset fills the recipe values neither gives. The merged configuration is written to
``RUN_DIR/config.json`` so that a run can be repeated and resumed exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from MFFMTCore.data.transforms import AUGMENTATIONS
from MFFMTCore.training.presets import preset_values


@dataclass
class TrainConfig:
    """Everything a training run needs.

    Args:
        data: datasets: BUSI- or BUS-BRA-layout folders, or datalist files (JSON/CSV).
        output: run folder for the model, checkpoint, progress and pictures.
        preset: named recipe (``cpu`` or ``paper``) that fills the recipe values left as None.
        backbone: ``resnet18`` (MFFMT18) or ``resnet50`` (MFFMT50).
        fusion: feature fusion of the network: ``mff`` (the paper), ``sum`` or ``concat`` (ablations).
        use_ca, use_cbam, decoder: network switches (coordinate attention, CBAM, full-resolution decoder).
        embed_dim: MFF token width (the paper: 512; 256 keeps MFFMT18 within 1.3x ResNet18's time).
        mlp_ratio: width ratio of MFF's MLPs (3.0 as in the paper; 2.0 for the narrow MFF).
        aux: ``auto`` adds a BI-RADS head when the training records carry BI-RADS; ``none`` never does.
        optimizer: ``adam`` or ``adamw``.
        lr: peak learning rate.
        weight_decay: weight decay (decoupled for AdamW).
        schedule: ``constant`` or ``cosine`` (after the warm-up).
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        epochs: number of epochs.
        batch_size: samples per optimisation step (per process under torchrun).
        input_size: side of the square network input; a multiple of 32.
        grad_clip: clip the gradient norm at this value; 0 disables clipping.
        precision: ``fp32``; ``bf16`` runs the training forward pass under bfloat16 autocast (weights,
            optimiser and validation stay float32); ``auto`` picks bf16 where the processor computes
            it natively (AVX512-BF16 or AMX CPUs, CUDA GPUs with bf16), else fp32.
        lambda_loc: weight of the lesion-perception loss L_loc (the paper's lambda).
        seg_weight: weight of the full-resolution segmentation loss.
        aux_weight: weight of the auxiliary (BI-RADS) loss.
        val_fraction: share of groups (near-duplicate groups, patients) held out for validation.
        mode: ``frame`` (whole images) or ``lesion`` (one crop per lesion box, the paper's protocol).
        margin: context margin around a lesion box in ``lesion`` mode, as a fraction of the box size.
        augment: ``paper`` (random quarter turns and both flips), ``lateral`` (left-right flips only,
            keeping the depth axis of the ultrasound image) or ``scanner`` (lateral flips, lesion-preserving
            crops, gain/TGC/gamma, speckle, resolution and synthetic calipers on whole batches on the
            training device: :class:`MFFMTCore.data.augment.ScannerAugment`).
        init_model: model file whose weights start the training (fine-tuning).
        pretrained_backbone: local torchvision-format ResNet weights (.pth or .safetensors) for the
            backbone of a new network (ignored with ``init_model``).
        seed: random seed of the split, initialisation and augmentation.
        device: ``cpu`` or ``cuda``.
        stop_file: a file whose appearance stops training at a safe point (default RUN_DIR/STOP).
        num_workers: data-loading worker processes (0 loads in the training process).
        threads: CPU threads for torch; None uses the cores available to this process.
        progress_bar: show a tqdm bar in the terminal.
    """

    data: list[str] = field(default_factory=list)
    output: str = ""
    preset: str = "cpu"
    backbone: str = "resnet18"
    fusion: str = "mff"
    use_ca: bool = True
    use_cbam: bool = True
    decoder: bool = True
    embed_dim: int = 512
    mlp_ratio: float = 3.0
    aux: str = "auto"
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    input_size: int | None = None
    grad_clip: float | None = None
    precision: str | None = None
    lambda_loc: float | None = None
    seg_weight: float = 1.0
    aux_weight: float = 0.5
    val_fraction: float = 0.2
    mode: str = "frame"
    margin: float = 0.2
    augment: str = "paper"
    init_model: str | None = None
    pretrained_backbone: str | None = None
    seed: int = 0
    device: str = "cpu"
    stop_file: str | None = None
    num_workers: int = 0
    threads: int | None = None
    progress_bar: bool = True

    def resolved(self) -> TrainConfig:
        """A copy with the preset's values filled in and every value checked.

        Raises:
            ValueError: a value is out of range or unknown; the message names the option.
        """
        values = asdict(self)
        for key, value in preset_values(self.preset, self.backbone).items():
            if values[key] is None:
                values[key] = value
        config = TrainConfig(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise ValueError naming the first option whose value cannot work."""
        choices = {
            "backbone": ("resnet18", "resnet50"), "fusion": ("mff", "sum", "concat"), "aux": ("auto", "none"),
            "optimizer": ("adam", "adamw"), "schedule": ("constant", "cosine"), "mode": ("frame", "lesion"),
            "augment": AUGMENTATIONS, "device": ("cpu", "cuda"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"not {getattr(self, key)!r}")
        if not self.data:
            raise ValueError("no training data: give --data PATH (a dataset folder or a datalist file)")
        if not self.output:
            raise ValueError("no run folder: give --output RUN_DIR")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "input_size": self.input_size,
                    "embed_dim": self.embed_dim, "mlp_ratio": self.mlp_ratio}
        for key, value in positive.items():
            if value is None or value <= 0:
                raise ValueError(f"--{key.replace('_', '-')} must be positive, not {value}")
        if self.input_size % 32:
            raise ValueError(f"--input-size must be a multiple of 32 (the network downsamples 32 times), "
                             f"not {self.input_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be between 0 and 1, not {self.val_fraction}")
        non_negative = {"weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
                        "grad_clip": self.grad_clip, "lambda_loc": self.lambda_loc, "seg_weight": self.seg_weight,
                        "aux_weight": self.aux_weight, "margin": self.margin, "num_workers": self.num_workers}
        for key, value in non_negative.items():
            if value < 0:
                raise ValueError(f"--{key.replace('_', '-')} must not be negative, not {value}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False)

    def architecture(self, aux_classes: dict[str, int] | None) -> dict[str, Any]:
        """Keyword arguments of :class:`MFFMTCore.network.MFFMT` for this run."""
        return {"backbone": self.backbone, "in_channels": 1, "num_classes": 2, "fusion": self.fusion,
                "use_ca": self.use_ca, "use_cbam": self.use_cbam, "decoder": self.decoder,
                "embed_dim": self.embed_dim, "mlp_ratio": self.mlp_ratio, "aux_classes": aux_classes or None}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON config file whose keys are :class:`TrainConfig` fields.

    Keys starting with "_" are comments. Relative ``data``, ``output``, ``init_model``,
    ``pretrained_backbone`` and ``stop_file`` paths are taken relative to the config file, so a
    config kept in the repository works from any working folder.

    Raises:
        ValueError: the file is missing, not JSON, not an object, or has an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold one JSON object of option names and values")
    values = {key: value for key, value in values.items() if not key.startswith("_")}  # "_comment" etc.
    known = {item.name for item in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def relative(value: str) -> str:
        return str((path.parent / value).resolve()) if not os.path.isabs(value) else value

    if isinstance(values.get("data"), str):
        values["data"] = [values["data"]]
    if "data" in values:
        values["data"] = [relative(item) for item in values["data"]]
    for key in ("output", "init_model", "pretrained_backbone", "stop_file"):
        if values.get(key):
            values[key] = relative(values[key])
    return values


def merge_config(*layers: dict[str, Any]) -> TrainConfig:
    """Build a config from layers of values, later layers winning; None values do not override."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({key: value for key, value in layer.items() if value is not None})
    return TrainConfig(**values)
