"""Learning-rate schedules, stepped once per iteration: linear warm-up, then step or cosine.

:func:`build_scheduler` wraps :class:`WarmupSchedule` in a plain function, so ``LambdaLR`` saves
only its step count: on resume the schedule comes from the (possibly extended) config, not from
the checkpoint.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


class WarmupSchedule:
    """Multiplier of the base lr at iteration ``it`` (0-based).

    - warm-up: for ``it < warmup_iters`` the factor rises linearly from ``warmup_factor`` to 1
      (``warmup_factor + (1 - warmup_factor) * it / warmup_iters``);
    - ``"step"``: then ``gamma ** (number of milestones <= it)`` (milestones in iterations);
    - ``"cosine"``: then ``min_factor + (1 - min_factor) * (1 + cos(pi * t)) / 2`` with
      ``t = it / total_iters`` clipped to [0, 1] (the warm-up multiplies the cosine).
    """

    def __init__(self, *, schedule: str = "step", warmup_iters: int = 0,
                 warmup_factor: float = 0.001, milestones: Sequence[int] = (),
                 gamma: float = 0.1, total_iters: int = 1, min_factor: float = 0.0):
        if schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown lr schedule {schedule!r}; expected step, cosine or constant")
        self.schedule = schedule
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.total_iters = max(1, int(total_iters))
        self.min_factor = float(min_factor)

    def __call__(self, it: int) -> float:
        if self.schedule == "step":
            factor = self.gamma ** sum(1 for m in self.milestones if m <= it)
        elif self.schedule == "cosine":
            t = min(max(it / self.total_iters, 0.0), 1.0)
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            factor = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor + (1 - self.warmup_factor) * alpha
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, iters_per_epoch: int,
                    epochs: int, warmup_iters: int = 0, warmup_factor: float = 0.001,
                    milestones_epochs: Sequence[int] = (), gamma: float = 0.1,
                    min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR``; step milestones are given in epochs."""
    fn = WarmupSchedule(schedule=schedule, warmup_iters=warmup_iters,
                        warmup_factor=warmup_factor,
                        milestones=[m * iters_per_epoch for m in milestones_epochs],
                        gamma=gamma, total_iters=iters_per_epoch * epochs, min_factor=min_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: fn(it))
