"""Contextual Lesion Enhancement Perception (CLEP) module of MFFMT.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.2, Figure 3 and equations (10)-(12).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from MFFMTCore.network.cbam import CBAM
from MFFMTCore.network.coordinate_attention import CoordinateAttention


class CLEP(nn.Module):
    """Enhance F1..F4, gather them on F4's grid as F_loc and predict the coarse lesion map P_mask.

    For each level: Coordinate Attention (eqs. 2-7), then CBAM (eqs. 8-9), then a 1x1 conv + BN + ReLU
    compressing to C(F2) channels, then average pooling to F4's grid. The four maps are concatenated
    into F_loc (``P_loc`` of eq. 10; with ResNet18/50 it has exactly F4's shape), and
    ``P_mask = sigmoid(BN(conv3x3(F_loc)))`` (eq. 11). The module returns P_mask's logits; eq. 12
    (threshold 0.5) is left to the caller.

    Args:
        in_channels: channels of F1..F4.
        scales: downsampling factor from each level to F4's grid (8, 4, 2, 1 for a ResNet). Fixed
            factors equal adaptive average pooling for inputs whose size is a multiple of 32, and keep
            the module free of shape-dependent code for tracing and ONNX export.
        use_ca: apply Coordinate Attention (ablation switch, paper Table 4).
        use_cbam: apply CBAM (ablation switch, paper Table 4).
        compress_channels: channels of each compressed level; default C(F2) as in the paper.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        scales: Sequence[int] = (8, 4, 2, 1),
        use_ca: bool = True,
        use_cbam: bool = True,
        compress_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(scales):
            raise ValueError(f"CLEP needs one scale per level, got {len(in_channels)} levels and {len(scales)} scales")
        compress = in_channels[1] if compress_channels is None else compress_channels
        self.scales = tuple(int(scale) for scale in scales)
        self.enhance = nn.ModuleList(
            nn.Sequential(
                CoordinateAttention(channels) if use_ca else nn.Identity(),
                CBAM(channels) if use_cbam else nn.Identity(),
            )
            for channels in in_channels
        )
        self.compress = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, compress, kernel_size=1, bias=False),
                nn.BatchNorm2d(compress),
                nn.ReLU(inplace=True),
            )
            for channels in in_channels
        )
        self.out_channels = compress * len(in_channels)
        self.mask_head = nn.Sequential(
            nn.Conv2d(self.out_channels, 1, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(1)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """
        Args:
            features: F1..F4, each (B, C_i, H_i, W_i) with H_i = scale_i * H_4.

        Returns:
            The enhanced maps (after CA and CBAM, one per level), F_loc (B, out_channels, H_4, W_4)
            and P_mask's logits (B, 1, H_4, W_4).
        """
        enhanced = [block(feature) for block, feature in zip(self.enhance, features)]
        gathered = []
        for compress, scale, feature in zip(self.compress, self.scales, enhanced):
            reduced = compress(feature)
            gathered.append(F.avg_pool2d(reduced, scale) if scale > 1 else reduced)
        f_loc = torch.cat(gathered, dim=1)
        return enhanced, f_loc, self.mask_head(f_loc)
