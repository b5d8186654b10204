"""Grad-CAM (Selvaraju et al. 2017) of MFFMT's class decision, as the paper shows it (section 3.5).

Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra, "Grad-CAM: visual explanations from deep
networks via gradient-based localization", ICCV 2017, equations (1)-(2): the activations ``A`` of
the explained layer, weighted per channel by the spatial mean of ``d y_c / d A``, summed over
channels, then ReLU. The layer is the one the network names in ``gradcam_layer`` (the backbone's
last stage by default). The maps equal those of MONAI's ``monai.visualize.GradCAM`` (a test holds
that); written here so that predicting needs no MONAI import.
"""

from __future__ import annotations

import copy
import threading

import torch
from torch import nn


def _scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map by its maximum, so 1 is the strongest evidence in that frame and 0 none."""
    peak = maps.flatten(1).amax(dim=1).view(-1, *[1] * (maps.ndim - 1))
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


class GradCamExplainer:
    """Grad-CAM maps of one class for batches of network inputs.

    A forward hook keeps the explained layer's output; the gradient of the class logit is taken
    with respect to that output alone (``torch.autograd.grad``), so no weight gradient is computed
    or stored. The hook sits on a private copy of the network, so the predictor's own network keeps
    its hook-free inference path; activations are kept per thread, so concurrent calls do not mix.

    Args:
        model: an MFFMT network (its ``gradcam_layer`` attribute names the layer to explain).
        class_index: the class whose logit is explained (the positive class, malignant).
    """

    def __init__(self, model: nn.Module, class_index: int) -> None:
        with torch.inference_mode(False):  # a copy made in inference mode could not take gradients
            self.network = copy.deepcopy(model).eval()
        self.class_index = class_index
        self._captured = threading.local()
        self.network.get_submodule(model.gradcam_layer).register_forward_hook(self._keep_output)

    def _keep_output(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self._captured.activations = output

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of ``x`` (B, C, H, W): (B, 1, h, w) maps in [0, 1] on the target layer's grid.

        The caller resizes them once, straight to each frame's size.
        """
        with torch.inference_mode(False), torch.enable_grad():
            logits = self.network(x.clone()).class_logits
            activations = self._captured.activations
            self._captured.activations = None
            # Frames are independent (batch norm in eval mode), so the sum's gradient is each frame's own.
            (gradients,) = torch.autograd.grad(logits[:, self.class_index].sum(), activations)
            weights = gradients.mean(dim=(2, 3), keepdim=True)
            maps = torch.relu((weights * activations).sum(dim=1, keepdim=True))
        return _scale_to_unit(maps.detach())
