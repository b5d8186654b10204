"""Patch embedding of MFFMT: feature map to tokens, one token per pixel of the F4 grid.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, equations (13)-(14).
"""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbedding(nn.Module):
    """Depthwise 3x3 conv, pointwise 1x1 conv, BN and GELU, then flatten to tokens (eqs. 13-14).

    No positional embedding: the depthwise convolution already mixes each token with its
    neighbours. With ``out_channels < in_channels`` the pointwise conv is also the projection of
    ResNet50's 2048-channel F4 to 512-wide tokens (a deviation recorded in docs/DESIGN.md, "MFF").

    Args:
        in_channels: channels of the feature map.
        out_channels: token width.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to tokens (B, H*W, out_channels), row-major."""
        x = self.act(self.norm(self.pointwise(self.depthwise(x))))
        return x.flatten(2).transpose(1, 2)
