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
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from tlresearch.finetune.base import FreezeSchedule, GroupSpec


class PeftSchedule(FreezeSchedule):
    """Base of the PEFT schedules: the head and the selected backbone parameters train from epoch 0."""

    name = "peft"

    def adapt(self, model: nn.Module) -> None:
        """Add the method's parameters to the backbone network, then remember which parameters train."""
        self._adapt(model)
        self._selected = {id(p) for n, p in model.named_parameters() if self.selects(n, p, model)}

    def _adapt(self, model: nn.Module) -> None:
        """Change the network (inject adapters, add prompts); nothing by default."""

    def selects(self, name: str, param: nn.Parameter, model: nn.Module) -> bool:
        """Whether the backbone parameter ``name`` trains."""
        raise NotImplementedError

    def eval_modules(self, model: nn.Module) -> Iterable[nn.Module]:
        """BatchNorm layers: kept in eval mode (see the module docstring)."""
        return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def backbone_groups(self, blocks):
        groups = []
        for name, params in blocks:
            trains = [p for p in params if id(p) in self._selected]
            frozen = [p for p in params if id(p) not in self._selected]
            if trains:
                groups.append(GroupSpec(f"backbone.{name}", trains, 1.0, 0))
            groups.append(GroupSpec(f"backbone.{name}" + (".frozen" if trains else ""), frozen, 0.0, None))
        return groups


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """The normalisation layers of ``model`` (BatchNorm, LayerNorm, GroupNorm, InstanceNorm and subclasses)."""
    kinds = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return [m for m in model.modules() if isinstance(m, kinds)]
