"""The learning-rate schedule: linear warm-up that starts above zero, then cosine decay (or constant)."""

from __future__ import annotations

import functools
import math

import torch


def lr_factor(update: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimiser update ``update`` (0-based) of ``total``.

    Warm-up ``(u + 1) / (warmup + 1)`` for ``u < warmup``: the first update already moves (transformers'
    ``get_*_schedule_with_warmup`` gives it 0, a wasted rollout); then ``'cosine'``:
    ``½ (1 + cos(π · (u − warmup) / (total − warmup)))``, or ``'constant'``: 1.
    """
    if update < warmup:
        return (update + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (update - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, warmup: int, total: int, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` of :func:`lr_factor`, stepped once per optimiser update (a partial, so it checkpoints)."""
    factor = functools.partial(lr_factor, warmup=warmup, total=total, schedule=schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
