"""The optimiser (parameter groups, Adam or SGD) and the warm-up / step-decay schedule."""

from __future__ import annotations

import torch
from torch import nn

import rank1
from pipeline.config import TrainConfig, to_steps


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over ``rank1.param_groups`` (no decay on the factor posteriors).

    With ``config.optim.decay_norm`` False, normalisation-layer parameters move from the
    decayed group to an undecayed one (the ImageNet recipe, spec 1.7). Every group trains
    at ``config.optim.lr``: ``fast_weight_lr_multiplier`` scales the factors' gradients in
    the training step (:func:`rank1.scale_factor_grads_`), as the reference does, not
    their learning rate.
    """
    o = config.optim
    groups = rank1.param_groups(model, o.weight_decay)
    if not o.decay_norm:
        norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
        norm_ids = {
            id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters()
        }
        shared = groups[0]
        norm = [p for p in shared["params"] if id(p) in norm_ids]
        shared["params"] = [p for p in shared["params"] if id(p) not in norm_ids]
        if norm:
            groups.append({"params": norm, "weight_decay": 0.0, "name": "norm"})
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """LR multiplier at ``step``: linear warm-up from 0, then step decay.

    Args:
        step: Optimiser step (from 0).
        config: The schedule lives in ``config.schedule``.
        steps_per_epoch: Converts epoch-based schedules to steps.

    Returns:
        The factor applied to each group's base learning rate.
    """
    s = config.schedule
    warmup = to_steps(s.warmup, s.unit, steps_per_epoch)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    drops = sum(step >= to_steps(b, s.unit, steps_per_epoch) for b in s.decay_at)
    return s.decay_factor**drops


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR of :func:`lr_factor` (its state dict holds only numbers)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, steps_per_epoch)
    )
