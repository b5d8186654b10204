"""Test-time adaptation of batch normalisation to the frames of one scanner.

When many frames of one scanner arrive together (a clip, a folder), their own statistics can replace
part of the training (source) statistics that every BatchNorm layer normalises with: AdaBN (Li et al.
2016, "Revisiting batch normalization for practical domain adaptation", arXiv:1603.04779) replaces
them outright; Schneider et al. 2020 ("Improving robustness against common corruptions by covariate
shift adaptation", NeurIPS) blend the two with a prior strength ``N``: the source counts as ``N``
frames against the ``n`` target frames,

    mean = N / (N + n) * mean_source + n / (N + n) * mean_target
    var  = N / (N + n) * var_source  + n / (N + n) * var_target

so ``N = 0`` is AdaBN and ``N = inf`` leaves the model as it is.

The target statistics are gathered without gradients, in batches, exactly: per channel, the mean and
variance over every pixel of every frame (each batch's moments pooled across batches in float64), not
a running average with momentum.
During the one pass each layer already normalises with the blend of what has been gathered so far,
so a later layer's statistics are taken (nearly) under the earlier layers' adapted normalisation.

The adapted network is a copy: the model it came from, which a server or a live session shares, is
never touched. Fewer than :data:`MIN_FRAMES` frames are too few to estimate statistics from, and are
not adapted on at all (a single frame's answer is the unadapted one). Measured leave-one-domain-out
in the model card ("Test-time adaptation").
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

#: Fewest frames adapted on: below this nothing is adapted (a frame, or a few, keep today's answer).
MIN_FRAMES = 8
#: Most frames the statistics are gathered from (spread evenly over the input); beyond this the
#: per-channel estimates gain nothing that matters and the cost keeps growing.
MAX_FRAMES = 128
#: Prior strength of the source statistics, in frames.
DEFAULT_PRIOR = 16.0
#: Which BatchNorm layers are adapted: every one, or the ResNet feature extractor's only.
LAYER_CHOICES = ("all", "backbone")


@dataclass(frozen=True)
class NormAdaptation:
    """How to adapt: the settings of ``--adapt-norm``.

    Args:
        prior_strength: ``N``, the source statistics' weight in frames (0: the target's alone; inf:
            no change).
        layers: one of :data:`LAYER_CHOICES`.
        min_frames: fewest frames adapted on (fewer: no adaptation).
        max_frames: most frames the statistics are gathered from.
    """

    prior_strength: float = DEFAULT_PRIOR
    layers: str = "all"
    min_frames: int = MIN_FRAMES
    max_frames: int = MAX_FRAMES

    def __post_init__(self) -> None:
        if not (self.prior_strength >= 0):  # also refuses NaN
            raise ValueError(f"prior strength must be 0 or more, got {self.prior_strength!r}")
        if self.layers not in LAYER_CHOICES:
            raise ValueError(f"layers must be one of {', '.join(LAYER_CHOICES)}, got {self.layers!r}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")

    def to_json(self) -> dict[str, float | int | str | None]:
        """Strict-JSON settings (an infinite prior is written as null)."""
        prior = self.prior_strength if math.isfinite(self.prior_strength) else None
        return {"prior_strength": prior, "layers": self.layers, "min_frames": self.min_frames,
                "max_frames": self.max_frames}


def adaptation_text(record: dict) -> str:
    """One line on what :meth:`MFFMTCore.inference.predictor.Predictor.adapted` did (its ``norm_adaptation``)."""
    prior = "inf" if record.get("prior_strength") is None else f"{record['prior_strength']:g}"
    if record.get("applied"):
        return (f"BatchNorm statistics ({record['layers']} layers) adapted to {record['frames']} frames of "
                f"{record['inputs']} input(s), prior strength {prior} frames")
    return (f"BatchNorm statistics not adapted: {record['frames']} readable frame(s), fewer than "
            f"{record['min_frames']}; the model's own statistics were used")


def adapted_layers(model: nn.Module, layers: str = "all") -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that ``layers`` adapts, by name (``backbone``: those under ``model.backbone``)."""
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {', '.join(LAYER_CHOICES)}, got {layers!r}")
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and (layers == "all" or name.split(".")[0] == "backbone")}


def blend(source: torch.Tensor, target: torch.Tensor, prior_strength: float, frames: int) -> torch.Tensor:
    """``N / (N + n) * source + n / (N + n) * target`` (``source`` when N is infinite, ``target`` when N = n = 0)."""
    if math.isinf(prior_strength):
        return source.clone()
    total = prior_strength + frames
    weight = frames / total if total > 0 else 1.0
    return (1.0 - weight) * source + weight * target


class _Gatherer:
    """Exact per-channel statistics of one BatchNorm layer's inputs, and the blend written into it."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, prior_strength: float):
        self.layer, self.prior_strength = layer, prior_strength
        self.mean = layer.running_mean.detach().clone()
        self.var = layer.running_var.detach().clone()
        channels = self.mean.numel()
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.squares = torch.zeros(channels, dtype=torch.float64)
        self.values = 0
        self.frames = 0

    def __call__(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach()
        # One batch's moments in the network's precision, added up across batches in float64 (exact pooling).
        var, mean = torch.var_mean(x.float(), dim=[d for d in range(x.dim()) if d != 1], correction=0)
        count = x.numel() // x.shape[1]
        mean = mean.cpu().double()
        self.sum += mean * count
        self.squares += (var.cpu().double() + mean * mean) * count
        self.values += count
        self.frames += x.shape[0]
        mean = self.sum / self.values
        var = (self.squares / self.values - mean * mean).clamp_min(0.0)
        self.layer.running_mean.copy_(blend(self.mean, mean.to(self.mean), self.prior_strength, self.frames))
        self.layer.running_var.copy_(blend(self.var, var.to(self.var), self.prior_strength, self.frames))


def adapt_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor], prior_strength: float = DEFAULT_PRIOR,
                     layers: str = "all") -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics blend its own with those of ``batches``.

    Args:
        model: the network (not changed).
        batches: preprocessed frames as the network takes them, (n, 1, H, W) each, on its device.
        prior_strength: ``N`` (see the module notes).
        layers: one of :data:`LAYER_CHOICES`.

    Returns:
        The adapted copy, in eval mode.
    """
    adapted = copy.deepcopy(model).eval()
    gatherers = [_Gatherer(layer, prior_strength) for layer in adapted_layers(adapted, layers).values()]
    handles = [gatherer.layer.register_forward_pre_hook(gatherer) for gatherer in gatherers]
    try:
        with torch.no_grad():
            for batch in batches:
                adapted(batch)
    finally:
        for handle in handles:
            handle.remove()
    return adapted


def statistics_digest(model: nn.Module, layers: str = "all") -> str:
    """SHA-256 of the running statistics of ``model``'s adaptable BatchNorm layers (``layers``): what an
    adapted network answers with, in a record that can be compared across runs."""
    digest = hashlib.sha256()
    for layer in adapted_layers(model, layers).values():
        digest.update(layer.running_mean.detach().cpu().numpy().tobytes())
        digest.update(layer.running_var.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def adapt_to_frames(model: nn.Module, batches: Iterable[torch.Tensor], frames: int, inputs: int,
                    adaptation: NormAdaptation) -> tuple[nn.Module, dict]:
    """``model`` adapted as ``adaptation`` says to ``frames`` frames of ``inputs`` inputs, and the record
    of what was done (its settings, ``applied``, ``frames``, ``inputs`` and, when applied,
    ``statistics_sha256``: :func:`statistics_digest` of the adapted layers).

    With fewer than ``adaptation.min_frames`` frames, ``model`` itself (not adapted), and ``batches``
    is not read.

    Args:
        model: the network (not changed).
        batches: the frames, as :func:`adapt_batch_norm` takes them (read lazily).
        frames: how many frames ``batches`` holds.
        inputs: how many inputs they come from.
        adaptation: the settings.
    """
    record = {**adaptation.to_json(), "applied": False, "frames": frames, "inputs": inputs}
    if frames < adaptation.min_frames:
        return model, record
    adapted = adapt_batch_norm(model, batches, adaptation.prior_strength, adaptation.layers)
    return adapted, record | {"applied": True, "statistics_sha256": statistics_digest(adapted, adaptation.layers)}
