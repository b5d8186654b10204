"""Optimiser and learning-rate schedule of a training run."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from MFFMTCore.training.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's parameters.

    Weight decay applies to weight matrices and convolution kernels only; biases and normalisation
    parameters (1-D tensors) are left undecayed, as is usual for ResNets and transformers.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(groups, lr=config.lr)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps.

    Linear warm-up from ``1 / warmup_steps`` to 1 over ``warmup_steps``, then constant or a cosine
    decay that reaches 0 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A per-step schedule; its state (the step count) is plain data, so checkpoints stay weights-only."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total, config.schedule)

    return LambdaLR(optimizer, factor)
