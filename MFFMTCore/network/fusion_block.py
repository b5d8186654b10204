"""Common parts of the two MFF blocks (DFFM, CFEFM): cross-attention, a linear map, a residual MLP.

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, Figures 7-8; after ATFuse (Xiong et al. 2024).
"""

from __future__ import annotations

from torch import nn

from MFFMTCore.network.attention import FactorisedCrossAttention
from MFFMTCore.network.mlp import ResidualMLP


class CrossFusionBlock(nn.Module):
    """Layers shared by DFFM and CFEFM; each subclass says in ``forward`` how they combine.

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
