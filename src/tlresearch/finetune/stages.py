"""Explicit training stages: from which epoch, which groups train, at which LR, with a fresh optimizer or not.

``finetune=stages`` writes a recipe's stages out as data, for recipes that are not one freeze
pattern with fixed LRs. The AI-for-Beginners transfer-learning lesson, for one, calls its training
function twice: the head alone on frozen VGG-16 features with ``Adam(lr=0.01)``, then every
parameter with a NEW ``Adam(lr=1e-4)`` (fresh moment estimates, the head at 1e-4 too)::

    stages:
      - {start_epoch: 0, lr_scales: {head: 1.0}}
      - {start_epoch: 1, lr_scales: {head: 0.01, backbone: 0.01}, restart_optimizer: true}

The classifier (``models/classifier.py``) still builds ONE optimizer from every group (the LR
scheduler sees every group from step one) and applies the stage in force at each epoch start
with :func:`enter_stage`: a group's LR is set by rescaling its entry in the optimizer and the LR
scheduler's ``base_lrs`` (the schedule's shape continues), and a restart clears the
optimizer's per-parameter state. Both steps are idempotent and the restart is recorded in the
optimizer's param groups, so a run resumed from any checkpoint, before or after a stage boundary,
continues with the stage's LRs and optimizer state (tests/finetune/test_stages.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import Optimizer

from tlresearch.core.config import check_bool, check_int, from_node, is_number, require
from tlresearch.core.errors import ConfigError, suggest
from tlresearch.finetune.base import FreezeSchedule, GroupSpec, Stage

#: Suffix of the optimizer group that holds a schedule group's parameters without weight decay.
NO_DECAY = ".no_decay"
#: Param-group key: the index of the last stage whose optimizer restart this group has had.
RESTARTED_AT = "restarted_at_stage"


@dataclass(frozen=True)
class StageSpec:
    """One entry of ``finetune.stages`` as written: group selectors (``head``, ``backbone`` for
    every backbone block, ``backbone.<block>`` for one) -> LR scale."""

    start_epoch: int
    lr_scales: Mapping[str, float]
    restart_optimizer: bool = False

    def validate(self, key: str) -> None:
        check_int(f"{key}.start_epoch", self.start_epoch, minimum=0)
        require(isinstance(self.lr_scales, Mapping) and len(self.lr_scales) > 0, f"{key}.lr_scales", self.lr_scales,
                "give a mapping of the groups that train in this stage to their LR scale, e.g. {head: 1.0, backbone: 0.1}.")
        for selector, scale in self.lr_scales.items():
            require(is_number(scale) and scale > 0, f"{key}.lr_scales.{selector}", scale,
                    "use a number > 0 (a group that does not train in this stage is left out).")
        check_bool(f"{key}.restart_optimizer", self.restart_optimizer)


class StagedSchedule(FreezeSchedule):
    """Stages given one by one (see the module docstring).

    Args:
        stages: in epoch order, the first at epoch 0; each a mapping with ``start_epoch``,
            ``lr_scales`` (the groups that train in the stage -> multiplier of ``optimizer.lr``;
            the groups left out are frozen) and ``restart_optimizer``. A group that trains in a
            stage trains in every later one (frozen weights are written once per run).
    """

    name = "stages"

    def __init__(self, stages: Sequence[Any]) -> None:
        require(isinstance(stages, Sequence) and not isinstance(stages, str) and len(stages) > 0, "finetune.stages", stages,
                "give a list of stages, each {start_epoch, lr_scales, restart_optimizer}.")
        specs = [from_node(StageSpec, node, f"finetune.stages.{i}") for i, node in enumerate(stages)]
        require(specs[0].start_epoch == 0, "finetune.stages.0.start_epoch", specs[0].start_epoch, "the first stage starts at epoch 0.")
        for i in range(1, len(specs)):
            require(specs[i].start_epoch > specs[i - 1].start_epoch, f"finetune.stages.{i}.start_epoch", specs[i].start_epoch,
                    f"stages start in increasing epochs (the previous one starts at {specs[i - 1].start_epoch}).")
        self.stages_spec = [{"start_epoch": s.start_epoch, "lr_scales": dict(s.lr_scales), "restart_optimizer": s.restart_optimizer}
                            for s in specs]
        self._specs = specs

    def groups(self, head: list[nn.Parameter], blocks: list[tuple[str, list[nn.Parameter]]]) -> list[GroupSpec]:
        """Each group starts in the first stage that trains it, at that stage's scale."""
        params = {"head": head, **{f"backbone.{name}": p for name, p in blocks}}
        stages = self._resolve(list(params))
        out = []
        for name, group_params in params.items():
            first = next((s for s in stages if name in s.lr_scales), None)
            out.append(GroupSpec(name, group_params, first.lr_scales[name] if first else 0.0, first.start_epoch if first else None))
        return out

    def stages(self, groups: list[GroupSpec]) -> list[Stage]:
        return self._resolve([g.name for g in groups])

    def _resolve(self, names: list[str]) -> list[Stage]:
        """The stages with their selectors resolved to the model's group names (a block's own
        entry wins over ``backbone``); unknown selectors and groups frozen again are refused."""
        stages = []
        for i, spec in enumerate(self._specs):
            for selector in spec.lr_scales:
                if selector not in names and selector != "backbone":
                    known = ["head", "backbone", *names[1:]]
                    raise ConfigError(f"finetune.stages.{i}.lr_scales.{selector} names no parameter group: use one of {known}."
                                      f"{suggest(selector, known)}")
            scales = {n: spec.lr_scales[n] if n in spec.lr_scales else spec.lr_scales.get("backbone")
                      for n in names if n in spec.lr_scales or (n.startswith("backbone.") and "backbone" in spec.lr_scales)}
            if stages:
                refrozen = sorted(set(stages[-1].lr_scales) - set(scales))
                require(not refrozen, f"finetune.stages.{i}.lr_scales", dict(spec.lr_scales),
                        f"{', '.join(refrozen)} trained in the previous stage and must keep training (give it a scale).")
            stages.append(Stage(spec.start_epoch, scales, spec.restart_optimizer))
        return stages


def stage_index(stages: Sequence[Stage], epoch: int) -> int:
    """The index of the stage in force at ``epoch``."""
    return max(i for i, s in enumerate(stages) if s.start_epoch <= epoch)


def schedule_group(param_group: Mapping[str, Any]) -> str:
    """The schedule group an optimizer param group belongs to (its name, without ``.no_decay``)."""
    return str(param_group.get("name", "")).removesuffix(NO_DECAY)


def enter_stage(optimizer: Optimizer, scheduler: Any, stages: Sequence[Stage], index: int, base_lr: float) -> list[str]:
    """Make ``optimizer`` (and its LR ``scheduler``, or None) follow ``stages[index]``; return what
    changed, for the log. Idempotent: called again (a resumed run), it changes nothing.

    * each training group's LR becomes ``base_lr`` x its scale: the scheduler's ``base_lrs`` (and
      the group's ``initial_lr``) are set, and the group's current LR rescaled by the same factor,
      so the LR schedule's shape carries on;
    * if this stage or an earlier one restarts the optimizer and a param group has not had that
      restart yet (its ``restarted_at_stage`` entry, saved with the optimizer state), the state of
      its parameters is cleared: the next step starts like a new optimizer's first step.
    """
    stage, changed = stages[index], []
    base_lrs = getattr(scheduler, "base_lrs", None)
    for i, group in enumerate(optimizer.param_groups):
        scale = stage.lr_scales.get(schedule_group(group))
        if scale is None:  # frozen in this stage: its LR is not used
            continue
        target = base_lr * scale
        current = base_lrs[i] if base_lrs is not None else group["lr"]
        if current == target:
            continue
        factor = group["lr"] / current if base_lrs is not None and current else 1.0  # where the LR schedule is now
        group["lr"] = target if factor == 1.0 else target * factor
        if base_lrs is not None:
            base_lrs[i] = group["initial_lr"] = target
        changed.append(f"{group.get('name', i)} lr x{target / current:g}" if current else f"{group.get('name', i)} lr {target:g}")
    restart = max((k for k in range(index + 1) if stages[k].restart_optimizer), default=None)
    if restart is not None:
        for group in optimizer.param_groups:
            if group.get(RESTARTED_AT, 0) < restart:
                for p in group["params"]:
                    optimizer.state.pop(p, None)
                group[RESTARTED_AT] = restart
                changed.append(f"{group.get('name', '?')} optimizer state cleared")
    return changed
