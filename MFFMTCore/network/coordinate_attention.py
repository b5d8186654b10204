"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021), as used by the CLEP module of MFFMT.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.2, equations (2)-(7).
"""

from __future__ import annotations

import torch
from torch import nn


class CoordinateAttention(nn.Module):
    """Channel attention that keeps position: pool along each axis, gate each row and each column.

    ``zeta_h = mean over W`` (eq. 2), ``zeta_w = mean over H`` (eq. 3); both are concatenated along the
    spatial axis and passed through a shared 1x1 conv, BN and h-swish to ``mip`` channels (eq. 4);
    split again, two 1x1 convs and a sigmoid give ``g_h`` and ``g_w`` (eqs. 5-6);
    ``y = x * g_h * g_w`` (eq. 7).

    Args:
        channels: channels of the input (and output) feature map.
        reduction: channel reduction ratio ``r`` of the shared transform.
        min_channels: lower bound of ``mip = max(min_channels, channels // reduction)``.
    """

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8) -> None:
        super().__init__()
        mip = max(min_channels, channels // reduction)
        self.conv = nn.Conv2d(channels, mip, kernel_size=1)
        self.norm = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, channels, kernel_size=1)
        self.conv_w = nn.Conv2d(mip, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1), eq. 2
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1), eq. 3
        f = self.act(self.norm(self.conv(torch.cat([pooled_h, pooled_w], dim=2))))  # eq. 4
        f_h, f_w = f[:, :, :height], f[:, :, height:]
        gate_h = torch.sigmoid(self.conv_h(f_h))  # (B, C, H, 1), eq. 5
        gate_w = torch.sigmoid(self.conv_w(f_w)).transpose(2, 3)  # (B, C, 1, W), eq. 6
        return x * gate_h * gate_w  # eq. 7
