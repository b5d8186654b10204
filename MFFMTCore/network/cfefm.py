"""Common Feature Enhancement Fusion Module (CFEFM) of MFFMT, after ATFuse's common injection.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, Figure 8 and equations (24)-(26).
"""

from __future__ import annotations

import torch

from MFFMTCore.network.fusion_block import CrossFusionBlock


class CFEFM(CrossFusionBlock):
    """Add the features the fused tokens share with a source to the fused tokens.

    ``CM = attention(Q=fused, K=source, V=source)`` (eq. 24), ``F_add = Linear(CM) + fused``
    (eq. 25), ``out = F_add + MLP(LN(F_add))`` (eq. 26). Arguments as :class:`CrossFusionBlock`.
    """

    def forward(self, query_tokens: torch.Tensor, source_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query_tokens: the previous block's output (B, s, dim), the source of Q.
            source_tokens: F_loc or F4 tokens (B, s, dim), the source of K and V.
        """
        common, _ = self.attention(query_tokens, source_tokens, source_tokens)
        return self.mlp(self.project(common) + query_tokens)
