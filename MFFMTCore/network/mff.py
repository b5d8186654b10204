"""Multi-Feature Fusion (MFF) module of MFFMT and its ablation alternatives.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, Figure 6 and equations (13)-(26).
"""

from __future__ import annotations

import torch
from torch import nn

from MFFMTCore.errors import MFFMTError
from MFFMTCore.network.cfefm import CFEFM
from MFFMTCore.network.dffm import DFFM
from MFFMTCore.network.patch_embedding import PatchEmbedding

CFEFM_KV_CHOICES = ("alternating", "loc")


class MFF(nn.Module):
    """Tokenise F4 and F_loc, then one DFFM and two CFEFMs (eq. 15).

    Args:
        in_channels: channels of F4 and of F_loc (equal for ResNet18/50).
        dim: token width; smaller than ``in_channels`` projects (ResNet50: 2048 -> 512).
        num_heads: attention heads of every block.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        cfefm_kv: source of K and V of the two CFEFMs: ``"alternating"`` (F_loc then F4, as in
            ATFuse and the paper's Figure 6) or ``"loc"`` (F_loc for both, the paper's text).
    """

    def __init__(
        self, in_channels: int, dim: int, num_heads: int = 4, mlp_ratio: float = 3.0, cfefm_kv: str = "alternating"
    ) -> None:
        super().__init__()
        if cfefm_kv not in CFEFM_KV_CHOICES:
            raise MFFMTError("cfefm_kv", f"must be one of {CFEFM_KV_CHOICES}, got {cfefm_kv!r}")
        self.second_source_is_f4 = cfefm_kv == "alternating"
        self.embed_f4 = PatchEmbedding(in_channels, dim)
        self.embed_loc = PatchEmbedding(in_channels, dim)
        self.dffm = DFFM(dim, num_heads, mlp_ratio)
        self.cfefm1 = CFEFM(dim, num_heads, mlp_ratio)
        self.cfefm2 = CFEFM(dim, num_heads, mlp_ratio)
        self.out_features = dim

    def forward(self, f4: torch.Tensor, f_loc: torch.Tensor) -> torch.Tensor:
        """Fuse (B, C, H, W) maps F4 and F_loc into tokens (B, H*W, dim)."""
        tokens_f4 = self.embed_f4(f4)  # eq. 13
        tokens_loc = self.embed_loc(f_loc)  # eq. 14
        fused = self.dffm(tokens_loc, tokens_f4)
        fused = self.cfefm1(fused, tokens_loc)
        return self.cfefm2(fused, tokens_f4 if self.second_source_is_f4 else tokens_loc)


class SumFusion(nn.Module):
    """Ablation "without MFF": elementwise sum of F4 and F_loc, as tokens (B, H*W, C)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_features = in_channels

    def forward(self, f4: torch.Tensor, f_loc: torch.Tensor) -> torch.Tensor:
        return (f4 + f_loc).flatten(2).transpose(1, 2)


class ConcatFusion(nn.Module):
    """Ablation "without MFF": concatenate F4 and F_loc, 1x1 conv + BN + ReLU back to C channels, as tokens.

    Args:
        in_channels: channels of F4 and of F_loc.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.mix = nn.Sequential(
            nn.Conv2d(2 * in_channels, in_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.out_features = in_channels

    def forward(self, f4: torch.Tensor, f_loc: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([f4, f_loc], dim=1)).flatten(2).transpose(1, 2)
