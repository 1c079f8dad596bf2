"""Freeze schedules: a pure description of which parameters train, from when, at what LR.

A schedule turns the head's parameters and the backbone's ordered blocks (stem -> last
stage) into :class:`GroupSpec` s. The classifier builds ONE optimizer from every group
that ever trains (frozen ones wait with ``requires_grad=False``), so the LR scheduler sees
every group from step one, a block unfrozen later trains at its intended LR under the
configured schedule, and a checkpoint restores the whole optimizer state. Which groups
train is a pure function of the epoch, so resuming from a checkpoint restores the
schedule's state with the epoch counter.

BatchNorm policy: a block that is frozen runs in eval mode as a whole (BatchNorm uses and
never updates its running statistics, dropout is off): a frozen block is a fixed feature
extractor, exactly what a feature cache would store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tlresearch.core.errors import ConfigError


@dataclass
class GroupSpec:
    """One parameter group: its parameters, LR multiplier and the epoch it starts training
    (``None``: never trains)."""

    name: str
    params: list[nn.Parameter] = field(repr=False)
    lr_scale: float = 1.0
    start_epoch: int | None = 0

    def trains_at(self, epoch: int) -> bool:
        return self.start_epoch is not None and epoch >= self.start_epoch


class FreezeSchedule:
    """Base class: subclasses implement :meth:`backbone_groups`; the head always trains
    from epoch 0 at the base LR."""

    name: str = "base"

    def groups(self, head: list[nn.Parameter], blocks: list[tuple[str, list[nn.Parameter]]]) -> list[GroupSpec]:
        """All parameter groups: the head first, then the backbone's blocks."""
        return [GroupSpec("head", head, 1.0, 0), *self.backbone_groups(blocks)]

    def backbone_groups(self, blocks: list[tuple[str, list[nn.Parameter]]]) -> list[GroupSpec]:
        raise NotImplementedError

    def describe(self) -> dict:
        """The schedule's settings, for logs and provenance."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    """Raise a ConfigError naming ``finetune.<key>`` unless ``value`` is positive."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"finetune.{key}={value} is invalid: it must be {bound}.")
