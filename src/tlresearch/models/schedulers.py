"""Learning-rate schedules with linear warm-up, as per-step multipliers of each group's LR.

Every schedule is a ``LambdaLR`` over *steps*: it scales each parameter group's initial LR,
so groups with different LR multipliers (layer decay, a backbone unfrozen later) all follow
the same shape, and Lightning checkpoints and restores it like any scheduler. Epoch-based
settings are converted with the number of optimizer steps per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from tlresearch.core.errors import ConfigError


def _warmup_steps(warmup_epochs: float, warmup_steps: int | None, steps_per_epoch: float) -> int:
    if warmup_steps is not None:
        return int(warmup_steps)
    if warmup_epochs < 0:
        raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs} is invalid: use a value >= 0.")
    return int(round(warmup_epochs * steps_per_epoch))


def _with_warmup(shape: Callable[[int], float], warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return shape(step)

    return factor


def cosine(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: float,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Cosine decay from each group's LR to ``min_lr_ratio`` x LR over the run, after warm-up."""
    warmup = _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch)

    def shape(step: int) -> float:
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, _with_warmup(shape, warmup))


def step(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: float,
    milestones: Sequence[float] = (),
    milestone_steps: Sequence[int] | None = None,
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
) -> LambdaLR:
    """Multiply the LR by ``gamma`` at each milestone (epochs, or ``milestone_steps`` in steps)."""
    warmup = _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch)
    bounds = sorted(milestone_steps if milestone_steps is not None else [round(m * steps_per_epoch) for m in milestones])
    if not 0 < gamma <= 1:
        raise ConfigError(f"scheduler.gamma={gamma} is invalid: use a value in (0, 1].")

    def shape(s: int) -> float:
        return gamma ** sum(s >= b for b in bounds)

    return LambdaLR(optimizer, _with_warmup(shape, warmup))


def constant(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: float,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
) -> LambdaLR:
    """A constant LR after warm-up."""
    warmup = _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch)
    return LambdaLR(optimizer, _with_warmup(lambda s: 1.0, warmup))
