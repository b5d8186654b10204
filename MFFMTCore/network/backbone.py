"""Feature extractor (FE) of MFFMT: the ImageNet-style 2D residual network of He et al. 2016.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.1, equation (1): F1..F4 are the outputs of the
four residual stages. He, Zhang, Ren, Sun, "Deep residual learning for image recognition", CVPR 2016:
the basic block (ResNet18/34) and the bottleneck block (ResNet50 and deeper), with the stride of a
bottleneck stage on its 3x3 convolution and a 1x1 convolution plus batch norm as the projection
shortcut (option B of the paper), as torchvision lays them out.

The layout and parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` ...), so its ImageNet weights load as they are, and equal those of the
MONAI ``ResNet`` that earlier models were built with, so their files (the shipped model too) load
unchanged. It needs only torch: predicting never imports MONAI, whose package import costs about 2 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from MFFMTCore.errors import MFFMTError

# name (one of MFFMTCore.base.choices.BACKBONES): (block, blocks per layer, channels of F1..F4)
BACKBONE_LAYOUTS: dict[str, tuple[str, list[int], tuple[int, int, int, int]]] = {
    "resnet18": ("basic", [2, 2, 2, 2], (64, 128, 256, 512)),
    "resnet50": ("bottleneck", [3, 4, 6, 3], (256, 512, 1024, 2048)),
}

#: Width of the four stages before a bottleneck's expansion.
STAGE_PLANES = (64, 128, 256, 512)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free convolution keeping the grid (up to ``stride``); batch norm follows it."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity or projection shortcut (He et al. 2016, fig. 2).

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (2 where a stage halves the grid).
        downsample: the projection shortcut where shape changes, else None (identity).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(in_planes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut  # in place: one activation-sized allocation less per block
        return self.act(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, plus shortcut (He et al. 2016, fig. 5).

    Args:
        in_planes: input channels.
        planes: channels of the 3x3 convolution; the block outputs ``4 * planes``.
        stride: stride of the 3x3 convolution.
        downsample: the projection shortcut where shape changes, else None (identity).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(in_planes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.act(out)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """2D ResNet without its classifier: ImageNet stem (7x7 stride-2 convolution, 3x3 stride-2 max
    pooling) and four stages; the forward pass returns the four stage outputs F1..F4.

    Convolutions start from He initialisation (normal, fan-out, ReLU gain), batch norms from
    weight 1 and bias 0, as torchvision and MONAI initialise them.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet18.
        in_channels: channels of the input image (1 for B-mode ultrasound).
    """

    def __init__(self, block: str, layers: list[int], in_channels: int = 1) -> None:
        super().__init__()
        block_type = BLOCKS[block]
        self.conv1 = nn.Conv2d(in_channels, STAGE_PLANES[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_PLANES[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = STAGE_PLANES[0]
        stages = []
        for index, (planes, blocks) in enumerate(zip(STAGE_PLANES, layers)):
            stride = 1 if index == 0 else 2
            stages.append(self._stage(block_type, in_planes, planes, blocks, stride))
            in_planes = planes * block_type.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(block_type: type[BasicBlock] | type[Bottleneck], in_planes: int, planes: int, blocks: int,
               stride: int) -> nn.Sequential:
        """One stage: its first block changes grid and width (projection shortcut), the rest keep them."""
        out_planes = planes * block_type.expansion
        downsample = None
        if stride != 1 or in_planes != out_planes:
            downsample = nn.Sequential(_conv(in_planes, out_planes, 1, stride), nn.BatchNorm2d(out_planes))
        first = block_type(in_planes, planes, stride, downsample)
        return nn.Sequential(first, *(block_type(out_planes, planes) for _ in range(1, blocks)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """F1..F4 of eq. (1) for images ``x`` (B, in_channels, H, W): 1/4, 1/8, 1/16, 1/32 of the input."""
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return f1, f2, f3, f4


def make_backbone(name: str = "resnet18", in_channels: int = 1) -> ResNet:
    """Build the named 2D ResNet laid out like torchvision's (same layers, same parameter names),
    randomly initialised.

    Args:
        name: ``"resnet18"`` or ``"resnet50"``.
        in_channels: channels of the input image (1 for B-mode ultrasound).
    """
    if name not in BACKBONE_LAYOUTS:
        raise MFFMTError("backbone", f"unknown backbone {name!r}; choose one of {sorted(BACKBONE_LAYOUTS)}")
    block, layers, _ = BACKBONE_LAYOUTS[name]
    return ResNet(block, layers, in_channels)


def backbone_channels(name: str) -> tuple[int, int, int, int]:
    """Channels of F1..F4 of the named backbone."""
    if name not in BACKBONE_LAYOUTS:
        raise MFFMTError("backbone", f"unknown backbone {name!r}; choose one of {sorted(BACKBONE_LAYOUTS)}")
    return BACKBONE_LAYOUTS[name][2]


def backbone_features(backbone: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """F1..F4 of eq. (1): the outputs of layer1..layer4, at 1/4, 1/8, 1/16 and 1/32 of the input."""
    return backbone(x)


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
