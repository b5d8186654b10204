"""Discrepancy Feature Fusion Module (DFFM) of MFFMT, after ATFuse's discrepancy injection.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, Figure 7 and equations (16)-(23).
"""

from __future__ import annotations

import torch

from MFFMTCore.network.fusion_block import CrossFusionBlock


class DFFM(CrossFusionBlock):
    """Inject what F4 has and F_loc lacks into the F_loc tokens.

    ``CF = attention(Q=F_loc, K=F4, V=F4)`` (eqs. 16-20), ``DF = Linear(V - CF)`` (eq. 21),
    ``F_add = DF + F_loc tokens`` (eq. 22), ``out = F_add + MLP(LN(F_add))`` (eq. 23).
    Arguments as :class:`CrossFusionBlock`.
    """

    def forward(self, query_tokens: torch.Tensor, source_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query_tokens: F_loc tokens (B, s, dim), the source of Q.
            source_tokens: F4 tokens (B, s, dim), the source of K and V.
        """
        common, value = self.attention(query_tokens, source_tokens, source_tokens)
        return self.mlp(self.project(value - common) + query_tokens)
