"""Norm tuning: only the normalisation layers' affine parameters train, plus the new head.

BatchNorm's running statistics stay the pretrained ones (eval mode; finetune/peft_base.py).
"""

from __future__ import annotations

from tlresearch.finetune.peft_base import PeftSchedule, norm_modules


class NormTuning(PeftSchedule):
    """The weight and bias of every BatchNorm / LayerNorm / GroupNorm layer train."""

    name = "norm_tuning"

    def _adapt(self, model) -> None:
        self._norm_params = {id(p) for m in norm_modules(model) for p in m.parameters(recurse=False)}

    def selects(self, name, param, model) -> bool:
        return id(param) in self._norm_params
