"""Named training recipes.

- ``paper``: the recipe of Wei et al. 2024 (section 3.1): Adam, lr 1e-5, 200 epochs, batch 8,
  256x256 inputs, lambda = 1.0 for ResNet18 and 0.1 for ResNet50 (their Figures 11-12). A learning
  rate this small suits pretrained weights; from random initialisation it learns very slowly.
- ``cpu``: a recipe that converges from random initialisation within hours on a 2-core CPU:
  AdamW at lr 1e-3 with a linear warm-up and a cosine decay, batch 16, 30 epochs at 256x256,
  gradient norm clipped at 5 (the transformer blocks see large gradients early on). See the training
  report in the project history for the short runs that chose it.

A preset fills every recipe value that a config file or the command line does not give.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "optimizer": "adam",
        "lr": 1e-5,
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "epochs": 200,
        "batch_size": 8,
        "input_size": 256,
        "grad_clip": 0.0,
        "precision": "fp32",
        "lambda_loc": {"resnet18": 1.0, "resnet50": 0.1},
    },
    "cpu": {
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-2,
        "schedule": "cosine",
        "warmup_epochs": 1.0,
        "epochs": 30,
        "batch_size": 16,
        "input_size": 256,
        "grad_clip": 5.0,
        "precision": "auto",
        "lambda_loc": {"resnet18": 1.0, "resnet50": 0.1},
    },
}


def preset_values(name: str, backbone: str) -> dict[str, Any]:
    """The recipe values of preset ``name`` for a network with ``backbone``.

    Raises:
        ValueError: unknown preset or backbone.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    by_backbone = values.pop("lambda_loc")
    if backbone not in by_backbone:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(by_backbone)}")
    values["lambda_loc"] = by_backbone[backbone]
    return values
