"""BitFit (Ben Zaken et al. 2022): only the backbone's bias terms train, plus the new head."""

from __future__ import annotations

from tlresearch.finetune.peft_base import PeftSchedule


class BitFit(PeftSchedule):
    """Every parameter named ``bias`` in the backbone trains; weights stay frozen (finetune/peft_base.py)."""

    name = "bitfit"

    def selects(self, name, param, model) -> bool:
        return name.rsplit(".", 1)[-1] == "bias"

    def method_label(self) -> str:
        return "BitFit"
