"""Factorised cross-attention of the MFF module (ATFuse, Xiong et al. 2024).

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, equations (16)-(20) and (24).
"""

from __future__ import annotations

import torch
from torch import nn

from MFFMTCore.errors import MFFMTError


class FactorisedCrossAttention(nn.Module):
    """Common features of a query source and a key/value source, in linear time in the tokens.

    Q, K and V are linear projections of the token segments (eq. 19). Per head,
    ``CF = Q . (softmax_over_tokens(K)^T . V) / sqrt(d_head)`` (eqs. 20 and 24): the keys are
    normalised over the tokens, summarising V into a ``d_head x d_head`` context that each query reads.

    Args:
        dim: token width.
        num_heads: number of heads; ``dim`` must be divisible by it.
    """

    def __init__(self, dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise MFFMTError("embed_dim", f"token width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        return tokens.reshape(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(
        self, query_tokens: torch.Tensor, key_tokens: torch.Tensor, value_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            query_tokens: (B, s, dim) source of Q.
            key_tokens: (B, s, dim) source of K.
            value_tokens: (B, s, dim) source of V.

        Returns:
            CF (B, s, dim) and the projected V (B, s, dim), which DFFM needs for eq. 21.
        """
        q = self._heads(self.query(query_tokens))
        k = self._heads(self.key(key_tokens)).softmax(dim=2)
        value = self.value(value_tokens)
        context = k.transpose(2, 3) @ self._heads(value)  # (B, heads, d, d)
        common = (q @ context) * self.scale
        return common.transpose(1, 2).flatten(2), value
