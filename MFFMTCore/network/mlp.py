"""Pre-norm residual MLP that closes the DFFM and CFEFM blocks.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, equations (23) and (26).
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """``x + MLP(LN(x))`` with a GELU MLP of hidden width ``mlp_ratio * dim`` (eqs. 23, 26).

    Args:
        dim: token width.
        mlp_ratio: hidden width as a multiple of ``dim`` (3 in ATFuse).
        eps: LayerNorm epsilon (1e-6 in ATFuse).
    """

    def __init__(self, dim: int, mlp_ratio: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))
