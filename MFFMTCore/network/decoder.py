"""Full-resolution lesion decoder: our addition to MFFMT (see docs/DESIGN.md, "Our addition: a full-resolution lesion map").

The paper's P_mask lives on the F4 grid (8x8 for a 256x256 input): lesion perception, not a
segmentation a user can edit. This light top-down decoder turns the CLEP-enhanced F1..F4 into a
lesion logit map at 1/4 resolution, upsampled bilinearly to the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _lateral(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _separable_refine(channels: int) -> nn.Sequential:
    # Depthwise-separable 3x3: the same receptive field as a full 3x3 for about 1/8 of its cost at 48
    # channels, which matters at 1/4 resolution where the decoder spends most of its work.
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False),
        nn.Conv2d(channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


class LesionDecoder(nn.Module):
    """FPN-style top-down path with U-Net-style 3x3 (depthwise-separable) refinement at every merge.

    ``p4 = lateral(F4)``; for i = 3, 2, 1: ``p_i = refine(lateral(F_i) + up2(p_{i+1}))``; the logit
    map is ``up(head(p1))`` at the input size. Every upsampling is bilinear with a fixed factor so
    the module traces and exports for any input size that is a multiple of 32.

    Args:
        in_channels: channels of the enhanced F1..F4.
        channels: width of the top-down path. The default 48 keeps the decoder near 40M multiply-adds
            for a 256x256 input (under 2% of ResNet18), so that CLEP + MFF + decoder stay within
            about 30% of the backbone (bench/bench_network.py).
        input_stride: stride of F1 relative to the input (4 for a ResNet).
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 48, input_stride: int = 4) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_lateral(c, channels) for c in in_channels)
        self.refine = nn.ModuleList(_separable_refine(channels) for _ in in_channels[:-1])
        self.head = nn.Conv2d(channels, 1, kernel_size=1)
        self.input_stride = float(input_stride)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map enhanced F1..F4 (finest first) to lesion logits (B, 1, H, W) at the input size."""
        path = self.lateral[-1](features[-1])
        for index in range(len(features) - 2, -1, -1):
            upsampled = F.interpolate(path, scale_factor=2.0, mode="bilinear", align_corners=False)
            path = self.refine[index](self.lateral[index](features[index]) + upsampled)
        logits = self.head(path)
        return F.interpolate(logits, scale_factor=self.input_stride, mode="bilinear", align_corners=False)
