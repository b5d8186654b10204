"""The joint loss of MFFMT with partial labels.

Paper (Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2.4, eqs. 28-30): ``L = L_cls + lambda * L_loc``.
We add ``seg_weight * L_seg`` for the full-resolution lesion map and ``aux_weight * L_aux`` for the
auxiliary heads. As in Tardy & Mateus, a sample may lack a class, a mask, or carry only a box; each
term averages over the samples that carry its label and is exactly zero (with a gradient path, never
NaN) when no sample in the batch does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from MFFMTCore.network.mffmt import MFFMTOutput


class LossParts(NamedTuple):
    """The total loss and its (unweighted) terms, each a scalar tensor."""

    total: torch.Tensor
    cls: torch.Tensor
    loc: torch.Tensor
    seg: torch.Tensor
    aux: torch.Tensor


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample ``values`` over the samples where ``keep`` is True; 0 when none is.

    The dropped samples' values are replaced, not multiplied by zero, so a non-finite value there
    cannot leak into the result or its gradient.
    """
    kept = torch.where(keep, values, torch.zeros_like(values))
    return kept.sum() / keep.sum().clamp(min=1)


def _per_sample_ce(logits: torch.Tensor, labels: torch.Tensor,
                   label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    keep = labels >= 0
    # Missing labels (-1) are replaced by a valid index so cross-entropy stays finite; masked out after.
    return F.cross_entropy(logits, labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing), keep


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-sample soft Dice loss ``1 - (2|P.T| + s) / (|P| + |T| + s)``.

    The smoothing ``s`` keeps it defined on an empty mask, where it rewards predicting nothing.
    """
    probability = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    overlap = (probability * target).sum(1)
    return 1.0 - (2.0 * overlap + smooth) / (probability.sum(1) + target.sum(1) + smooth)


class MFFMTLoss(nn.Module):
    """``L = L_cls + lambda_loc * L_loc + seg_weight * L_seg + aux_weight * L_aux``.

    - ``L_cls``: cross-entropy of the class logits over samples with ``label >= 0`` (eq. 29), with
      optional label smoothing (the target is ``1 - eps`` on the label plus ``eps / 2`` on each class).
    - ``L_loc``: BCE with logits between P_mask's logits and the mask area-downsampled to the coarse
      grid (soft targets) over samples with ``has_mask``, boxes included (eq. 30).
    - ``L_seg``: BCE + soft Dice of the full-resolution logits over samples with ``has_mask`` and not
      ``mask_is_box`` (a box is too coarse for pixel-level supervision).
    - ``L_aux``: sum over the auxiliary heads of their cross-entropy over samples with label >= 0.

    Args:
        lambda_loc: weight of ``L_loc`` (paper: 1.0 for ResNet18, 0.1 for ResNet50).
        seg_weight: weight of ``L_seg`` (0 for the paper-faithful recipe).
        aux_weight: weight of ``L_aux``.
        label_smoothing: ``eps`` of ``L_cls``'s label smoothing in [0, 1); 0 is plain cross-entropy.

    The weights are keywords only: four numbers in a row are too easy to give in the wrong order.
    """

    def __init__(self, *, lambda_loc: float = 1.0, seg_weight: float = 1.0, aux_weight: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.lambda_loc = lambda_loc
        self.seg_weight = seg_weight
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing

    def forward(self, output: MFFMTOutput, target: dict) -> LossParts:
        """
        Args:
            output: the network's output.
            target: ``"label"`` (B,) long with -1 = none; ``"mask"`` (B, 1, H, W) float 0/1;
                ``"has_mask"`` (B,) bool; ``"mask_is_box"`` (B,) bool; optional ``"aux"``: name ->
                (B,) long with -1 = none.
        """
        labels = target["label"].to(output.class_logits.device).long()
        ce, keep = _per_sample_ce(output.class_logits, labels, self.label_smoothing)
        loss_cls = masked_mean(ce, keep)

        has_mask = target["has_mask"].to(output.mask_logits.device).bool()
        mask = target["mask"].to(output.mask_logits.device, output.mask_logits.dtype)
        # Whatever stands in for a missing mask must not reach the gradient (NaN * 0 is NaN).
        mask = torch.where(has_mask[:, None, None, None], mask, torch.zeros_like(mask))
        coarse = output.coarse_mask_logits
        coarse_target = F.adaptive_avg_pool2d(mask, coarse.shape[-2:])
        loc = F.binary_cross_entropy_with_logits(coarse, coarse_target, reduction="none").flatten(1).mean(1)
        loss_loc = masked_mean(loc, has_mask)

        full = has_mask & ~target["mask_is_box"].to(mask.device).bool()
        logits = output.mask_logits
        seg = F.binary_cross_entropy_with_logits(logits, mask, reduction="none").flatten(1).mean(1)
        loss_seg = masked_mean(seg + soft_dice_loss(logits, mask), full)

        loss_aux = output.class_logits.sum() * 0.0
        aux_targets = target.get("aux") or {}
        for name, aux_logits in output.aux_logits.items():
            if name in aux_targets:
                ce, keep = _per_sample_ce(aux_logits, aux_targets[name].to(aux_logits.device).long())
                loss_aux = loss_aux + masked_mean(ce, keep)

        total = loss_cls + self.lambda_loc * loss_loc + self.seg_weight * loss_seg + self.aux_weight * loss_aux
        return LossParts(total, loss_cls, loss_loc, loss_seg, loss_aux)
