"""What the serving tests share: small model files to serve."""

from __future__ import annotations

from pathlib import Path

import torch

from MFFMTCore.model_file import ModelInfo, save_model
from MFFMTCore.network import MFFMT

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "MFFMTCore" / "samples").glob("bus_*.png"))


def random_model(path: Path, seed: int) -> Path:
    """A random-weight MFFMT18 model file with a 64x64 input, named ``seed<seed>``."""
    torch.manual_seed(seed)
    network = MFFMT(backbone="resnet18")
    save_model(path, network, ModelInfo(architecture=network.architecture, input_size=[64, 64], name=f"seed{seed}"))
    return path
