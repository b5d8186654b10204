"""Discrepancy Feature Fusion Module (DFFM) of MFFMT, after ATFuse's discrepancy injection.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, Figure 7 and equations (16)-(23).
"""

from __future__ import annotations

import torch
from torch import nn

from MFFMTCore.network.attention import FactorisedCrossAttention
from MFFMTCore.network.mlp import ResidualMLP


class DFFM(nn.Module):
    """Inject what F4 has and F_loc lacks into the F_loc tokens.

    ``CF = attention(Q=F_loc, K=F4, V=F4)`` (eqs. 16-20), ``DF = Linear(V - CF)`` (eq. 21),
    ``F_add = DF + F_loc tokens`` (eq. 22), ``out = F_add + MLP(LN(F_add))`` (eq. 23).

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
    """

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: float = 3.0) -> None:
        super().__init__()
        self.attention = FactorisedCrossAttention(dim, num_heads)
        self.project = nn.Linear(dim, dim)
        self.mlp = ResidualMLP(dim, mlp_ratio)

    def forward(self, query_tokens: torch.Tensor, source_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query_tokens: F_loc tokens (B, s, dim), the source of Q.
            source_tokens: F4 tokens (B, s, dim), the source of K and V.
        """
        common, value = self.attention(query_tokens, source_tokens, source_tokens)
        return self.mlp(self.project(value - common) + query_tokens)
