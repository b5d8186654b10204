"""Convolutional Block Attention Module (Woo et al., ECCV 2018), as used by the CLEP module of MFFMT.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.2, equations (8)-(9).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Channel gate ``M_c = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` (eq. 8), applied as ``x * M_c``.

    The MLP's input is non-negative (it follows ReLU features) and nearly the same for every image
    at initialisation, so each hidden ReLU starts dead with probability 1/2 for all images at once;
    with 64 channels and r = 16 all four hidden units were dead, and stayed so, in 2 of 6 seeds.
    The hidden width therefore has a floor of ``min_hidden`` (8, as Coordinate Attention's ``mip``).

    Args:
        channels: channels of the input feature map.
        reduction: hidden width of the shared MLP is ``max(min_hidden, channels // reduction)``.
        min_hidden: lower bound of the hidden width.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3)))
        peak = self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(avg + peak)[:, :, None, None]


class SpatialAttention(nn.Module):
    """Spatial gate ``M_s = sigmoid(BN(conv7x7([max_c(x); mean_c(x)])))`` (eq. 9), applied as ``x * M_s``.

    The channel order [max, mean] and the BN follow Woo et al.'s reference implementation.

    Args:
        kernel_size: size of the square convolution over the two pooled maps.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention (eqs. 8-9).

    Args:
        channels: channels of the input feature map.
        reduction: reduction ratio of the channel MLP.
        kernel_size: size of the spatial attention convolution.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
