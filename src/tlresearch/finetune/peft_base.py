"""Parameter-efficient transfer as freeze schedules: one base for BitFit, norm tuning, LoRA and VPT.

A :class:`PeftSchedule` first *adapts* the backbone network (LoRA injects adapters, VPT adds
prompt tokens; BitFit and norm tuning change nothing), then says which backbone parameters train
(:meth:`PeftSchedule.selects`). Every backbone block becomes two groups: ``backbone.<block>`` with
its selected parameters (training from epoch 0 at ``optimizer.lr``) and ``backbone.<block>.frozen``
with the rest (never trains); a block with nothing selected is one frozen group (eval mode, as in
the linear probe). The optimizer is built once, which parameters train is a pure function of the
epoch, and a resumed run continues exactly: the contract of ``finetune/base.py``.

BatchNorm policy: under every PEFT schedule BatchNorm layers stay in eval mode for the whole run:
they normalise with the pretrained running statistics and never update them, so the trained
parameters (plus the head) are all that changes (norm tuning trains BatchNorm's affine weight and
bias, not its statistics). LayerNorm and GroupNorm have no running statistics.

Combination: ``combine: layer_decay`` gives the selected parameters of each block that block's LR
scale under layer-wise LR decay; ``combine: gradual`` gives them the block's unfreezing epoch (the
head alone first, then the top blocks' selected parameters). ``combine_args`` are that schedule's
settings (e.g. ``{decay: 0.65}``). Other schedules do not combine: each decides what trains itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from tlresearch.core.config import check_choice
from tlresearch.finetune.base import FreezeSchedule, GroupSpec
from tlresearch.finetune.gradual import GradualUnfreeze
from tlresearch.finetune.layer_decay import LayerDecay

COMBINABLE: dict[str, type[FreezeSchedule]] = {"layer_decay": LayerDecay, "gradual": GradualUnfreeze}


class PeftSchedule(FreezeSchedule):
    """Base of the PEFT schedules: the head and the selected backbone parameters train from epoch 0.

    Args:
        combine: ``None``, ``layer_decay`` or ``gradual``: shape the selected parameters' LR scales or
            start epochs per block with that schedule (see the module docstring).
        combine_args: that schedule's settings.
    """

    name = "peft"
    keeps_pretrained_base = True

    def __init__(self, combine: str | None = None, combine_args: dict | None = None) -> None:
        if combine is not None:
            check_choice("finetune.combine", combine, tuple(COMBINABLE))
        self.combine = combine
        self.combine_args = dict(combine_args or {})
        self._shape = COMBINABLE[combine](**self.combine_args) if combine else None

    def adapt(self, model: nn.Module) -> None:
        """Add the method's parameters to the backbone network, then remember which parameters train."""
        self._adapt(model)
        self._selected = {id(p) for n, p in model.named_parameters() if self.selects(n, p, model)}

    def _adapt(self, model: nn.Module) -> None:
        """Change the network (inject adapters, add prompts); nothing by default."""

    def selects(self, name: str, param: nn.Parameter, model: nn.Module) -> bool:
        """Whether the backbone parameter ``name`` trains."""
        raise NotImplementedError

    def label(self) -> str:
        return self.method_label() + (f" + {self.combine.replace('_', ' ')}" if self.combine else "")

    def method_label(self) -> str:
        """The method's own name and settings (``label`` adds the combined schedule)."""
        return self.name.replace("_", " ")

    def eval_modules(self, model: nn.Module) -> Iterable[nn.Module]:
        """BatchNorm layers: kept in eval mode (see the module docstring)."""
        return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def backbone_groups(self, blocks):
        shape = {g.name: g for g in self._shape.backbone_groups(blocks)} if self._shape else {}
        groups = []
        for name, params in blocks:
            ref = shape.get(f"backbone.{name}", GroupSpec("", [], 1.0, 0))
            trains = [p for p in params if id(p) in self._selected] if ref.start_epoch is not None else []
            frozen = [p for p in params if id(p) not in {id(t) for t in trains}]
            if trains:
                groups.append(GroupSpec(f"backbone.{name}", trains, ref.lr_scale, ref.start_epoch))
            groups.append(GroupSpec(f"backbone.{name}" + (".frozen" if trains else ""), frozen, 0.0, None))
        return groups


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """The normalisation layers of ``model`` (BatchNorm, LayerNorm, GroupNorm, InstanceNorm and subclasses)."""
    kinds = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return [m for m in model.modules() if isinstance(m, kinds)]
