"""Feature extractor (FE) of MFFMT: MONAI's ResNet configured as the ImageNet-style 2D ResNet.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.1, equation (1).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from monai.networks.nets import ResNet

from MFFMTCore.errors import MFFMTError

# name (one of MFFMTCore.base.choices.BACKBONES): (block, blocks per layer, channels of F1..F4)
BACKBONE_LAYOUTS: dict[str, tuple[str, list[int], tuple[int, int, int, int]]] = {
    "resnet18": ("basic", [2, 2, 2, 2], (64, 128, 256, 512)),
    "resnet50": ("bottleneck", [3, 4, 6, 3], (256, 512, 1024, 2048)),
}


def make_backbone(name: str = "resnet18", in_channels: int = 1) -> ResNet:
    """Build MONAI's 2D ResNet laid out like torchvision's (same layers, same parameter names).

    ``conv1_t_stride=2`` gives the ImageNet stem (MONAI's default stride 1 costs four times the
    compute); shortcut "B" with ``bias_downsample=False`` is torchvision's 1x1-conv downsample;
    ``feed_forward=False`` drops the fully connected layer. Random initialisation.

    Args:
        name: ``"resnet18"`` or ``"resnet50"``.
        in_channels: channels of the input image (1 for B-mode ultrasound).
    """
    if name not in BACKBONE_LAYOUTS:
        raise MFFMTError("backbone", f"unknown backbone {name!r}; choose one of {sorted(BACKBONE_LAYOUTS)}")
    block, layers, _ = BACKBONE_LAYOUTS[name]
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )


def backbone_channels(name: str) -> tuple[int, int, int, int]:
    """Channels of F1..F4 of the named backbone."""
    if name not in BACKBONE_LAYOUTS:
        raise MFFMTError("backbone", f"unknown backbone {name!r}; choose one of {sorted(BACKBONE_LAYOUTS)}")
    return BACKBONE_LAYOUTS[name][2]


def backbone_features(backbone: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """F1..F4 of eq. (1): the outputs of layer1..layer4, at 1/4, 1/8, 1/16 and 1/32 of the input."""
    x = backbone.maxpool(backbone.act(backbone.bn1(backbone.conv1(x))))
    f1 = backbone.layer1(x)
    f2 = backbone.layer2(f1)
    f3 = backbone.layer3(f2)
    f4 = backbone.layer4(f3)
    return f1, f2, f3, f4


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any decoding failure means "not a weights file"
        raise MFFMTError(path, f"not a readable state dict ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MFFMTError(path, "not a state dict of tensors")
    return state


def load_torchvision_weights(backbone: ResNet, path: str | os.PathLike) -> list[str]:
    """Load a local torchvision-format ResNet state dict (e.g. ImageNet weights) into ``backbone``.

    torchvision's parameter names equal those of :func:`make_backbone`'s ResNet; a ``module.``
    prefix (DataParallel) is removed and the classifier ``fc.*`` is dropped. When the backbone takes
    one channel and the file has an RGB stem, the first convolution is summed over RGB: a grey image
    then gives exactly the response the RGB stem gives to that image copied into three channels.
    Such weights expect ImageNet-normalised RGB; our [0, 1] grey input is a domain shift that
    fine-tuning absorbs.

    Args:
        backbone: the ResNet from :func:`make_backbone`.
        path: ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``.

    Returns:
        The names of the file's tensors that were not used (``fc.*``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MFFMTError: the file is not a state dict, or its tensors do not fit the backbone.
    """
    path = Path(path)
    state = {key.removeprefix("module."): value for key, value in _read_state_dict(path).items()}
    unused = sorted(key for key in state if key.startswith("fc."))
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    stem = state.get("conv1.weight")
    wanted = backbone.conv1.weight.shape[1]
    if stem is not None and stem.shape[1] != wanted:
        if wanted != 1:
            raise MFFMTError(path, f"stem has {stem.shape[1]} input channels, the backbone takes {wanted}")
        state["conv1.weight"] = stem.sum(dim=1, keepdim=True)
    reference = backbone.state_dict()
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    wrong = [key for key in reference if key in state and state[key].shape != reference[key].shape]
    if missing or extra or wrong:
        problems = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
        raise MFFMTError(path, f"does not fit the {type(backbone).__name__} backbone ({'; '.join(problems)})")
    backbone.load_state_dict(state, strict=True)
    return unused
