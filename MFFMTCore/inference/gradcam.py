"""Grad-CAM (Selvaraju et al. 2017) of MFFMT's class decision, as the paper shows it (section 3.5).

MONAI's :class:`monai.visualize.GradCAM` needs a network that returns class logits only; MFFMT
returns a NamedTuple of several outputs, hence the small wrapper. The map is taken at the layer the
network names in ``gradcam_layer`` (the backbone's last stage by default).
"""

from __future__ import annotations

import copy

import torch
from monai.visualize import GradCAM
from torch import nn


class ClassLogits(nn.Module):
    """``model(x).class_logits``: the one output Grad-CAM explains."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).class_logits


def _scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map by its maximum, so 1 is the strongest evidence in that frame and 0 none."""
    peak = maps.flatten(1).amax(dim=1).view(-1, *[1] * (maps.ndim - 1))
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


class GradCamExplainer:
    """Grad-CAM maps of one class for batches of network inputs.

    The hooks MONAI registers stay on the module they watch, so they are put on a private copy of
    the network: the predictor's own network keeps its hook-free inference path.

    Args:
        model: an MFFMT network (its ``gradcam_layer`` attribute names the layer to explain).
        class_index: the class whose logit is explained (the positive class, malignant).
    """

    def __init__(self, model: nn.Module, class_index: int) -> None:
        network = ClassLogits(copy.deepcopy(model)).eval()
        self.class_index = class_index
        # The upsampler keeps the layer's grid: the caller resizes once, straight to each frame's size.
        self.cam = GradCAM(
            nn_module=network,
            target_layers=f"model.{model.gradcam_layer}",
            upsampler=lambda size: (lambda maps: maps),
            postprocessing=_scale_to_unit,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of ``x`` (B, C, H, W): (B, 1, h, w) maps in [0, 1] on the target layer's grid."""
        with torch.inference_mode(False), torch.enable_grad():
            return self.cam(x.clone(), class_idx=self.class_index).detach()
