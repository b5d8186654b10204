"""Classification head of MFFMT (and of the auxiliary tasks).

Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.3, equation (27).
"""

from __future__ import annotations

import torch
from torch import nn


class TokenClassifier(nn.Module):
    """Mean over the tokens, then one fully connected layer (eq. 27; returns logits, not probabilities).

    Args:
        in_features: token width.
        num_classes: number of logits.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map tokens (B, s, in_features) to logits (B, num_classes)."""
        return self.fc(tokens.mean(dim=1))
