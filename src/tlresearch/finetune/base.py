"""Freeze schedules: a pure description of which parameters train, from when, at what LR.

A schedule turns the head's parameters and the backbone's ordered blocks (stem -> last
stage) into :class:`GroupSpec` s. The classifier builds ONE optimizer from every group
that ever trains (frozen ones wait with ``requires_grad=False``), so the LR scheduler sees
every group from step one, a block unfrozen later trains at its intended LR under the
configured schedule, and a checkpoint restores the whole optimizer state. Which groups
train is a pure function of the epoch, so resuming from a checkpoint restores the
schedule's state with the epoch counter.

Stages: the schedule's run is a sequence of :class:`Stage` s (:meth:`FreezeSchedule.stages`).
Each says, from its first epoch on, which groups train and at which LR scale, and whether the
optimizer starts afresh (its per-parameter state, e.g. Adam's moments, cleared) as a new
optimizer would. Most schedules never change a group's LR once it trains: their stages are
derived from the groups. ``finetune/stages.py`` spells the stages out (a recipe that calls its
training function twice with a new optimizer and another LR, as the AI-for-Beginners lesson).

BatchNorm policy: a block that is frozen runs in eval mode as a whole (BatchNorm uses and
never updates its running statistics, dropout is off): a frozen block is a fixed feature
extractor, exactly what a feature cache would store.

Protocol: :meth:`FreezeSchedule.protocol` returns a typed, frozen settings object that says how
the run trains: :class:`EpochLoopSettings` (Lightning's epoch loop, fed by the feature cache
where it applies) unless a schedule returns another :class:`ProtocolSettings` (e.g. the L-BFGS
logistic regression of ``finetune/logistic.py``). The train task hands it to
``tlresearch.protocols.run.run_protocol``, which picks the protocol by the settings' type; a
schedule never imports a protocol (this package imports only ``tlresearch.core`` and torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from tlresearch.core.config import require


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


@dataclass(frozen=True)
class Stage:
    """From ``start_epoch`` until the next stage starts, the groups named in ``lr_scales`` train at
    ``optimizer.lr`` x their scale; every other group is frozen. ``restart_optimizer``: when the
    stage begins, the optimizer's per-parameter state (momentum buffers, Adam's moments and step
    counts) is cleared, as if a new optimizer were built."""

    start_epoch: int
    lr_scales: Mapping[str, float]
    restart_optimizer: bool = False


@dataclass(frozen=True)
class ProtocolSettings:
    """Base of the settings objects a schedule's :meth:`FreezeSchedule.protocol` returns; the
    protocol that runs is chosen by the concrete type (``tlresearch.protocols.run``)."""


@dataclass(frozen=True)
class EpochLoopSettings(ProtocolSettings):
    """Train with Lightning's epoch loop; with a frozen backbone, feed it cached features.

    Args:
        cache_features: use the feature cache where it applies (no backbone block trains and
            nothing random happens before the head); ``False`` always runs the backbone.
        cache_views: ``K >= 1``: cache K augmented views per training image when training
            augmentation is on (``0``: the cache applies only without augmentation). Under
            ``data.augment.enabled=auto`` it also says what auto means for a frozen backbone:
            augment (``K >= 1``) or not (``0``, the literature's linear probe); when backbone
            blocks train, auto augments (``tlresearch.protocols.epoch_loop``).
        decode_on_device: decode JPEGs in batches on the device while extracting features.
    """

    cache_features: bool = True
    cache_views: int = 0
    decode_on_device: bool = False


class FreezeSchedule:
    """Base class: subclasses implement :meth:`backbone_groups`; the head always trains
    from epoch 0 at the base LR."""

    name: str = "base"
    #: Whether the pretrained backbone never changes under this schedule (only the head and
    #: parameters the schedule adds or selects train; BatchNorm statistics stay): then a run with
    #: named pretrained weights checkpoints only what trains (``checkpoints/partial.py``).
    keeps_pretrained_base: bool = False

    def groups(self, head: list[nn.Parameter], blocks: list[tuple[str, list[nn.Parameter]]]) -> list[GroupSpec]:
        """All parameter groups: the head first, then the backbone's blocks."""
        return [GroupSpec("head", head, 1.0, 0), *self.backbone_groups(blocks)]

    def backbone_groups(self, blocks: list[tuple[str, list[nn.Parameter]]]) -> list[GroupSpec]:
        raise NotImplementedError

    def label(self) -> str:
        """The method's short name with its key settings, for tables (``params/label`` of metrics.json)."""
        return self.name.replace("_", " ")

    def adapt(self, model: nn.Module) -> None:
        """Change the backbone network before its blocks' parameters are read (PEFT schedules add
        adapters or prompts, ``finetune/peft_base.py``); nothing by default."""

    def eval_modules(self, model: nn.Module) -> Iterable[nn.Module]:
        """Modules of the backbone network kept in eval mode while training (beyond frozen blocks)."""
        return ()

    def stages(self, groups: list[GroupSpec]) -> list[Stage]:
        """The run's stages, in epoch order, the first at epoch 0. By default one stage per epoch at
        which a group starts training, every training group at its own ``lr_scale``, no restart."""
        starts = sorted({0, *(g.start_epoch for g in groups if g.start_epoch is not None)})
        return [Stage(s, {g.name: g.lr_scale for g in groups if g.trains_at(s)}) for s in starts]

    def protocol(self) -> ProtocolSettings:
        """How a run with this schedule trains: the epoch loop, with the feature cache where it
        applies (schedules whose backbone trains never meet its conditions)."""
        return EpochLoopSettings()

    def describe(self) -> dict:
        """The schedule's settings, for logs and provenance."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    """Raise a ConfigError naming ``finetune.<key>`` unless ``value`` is positive."""
    bound = ">= 0" if allow_zero else "> 0"
    # Written as "not below the bound" so that NaN passes, as it always has.
    require(not (value < 0 or (value == 0 and not allow_zero)), f"finetune.{key}", value, f"it must be {bound}.")
