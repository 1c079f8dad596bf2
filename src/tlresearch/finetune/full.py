"""Full fine-tuning: everything trains from the first step, the backbone at a scaled LR."""

from __future__ import annotations

from tlresearch.finetune.base import FreezeSchedule, GroupSpec, check_positive


class FullFinetune(FreezeSchedule):
    """All blocks train from epoch 0.

    Args:
        backbone_lr_mult: backbone LR = base LR x this (1.0: one LR for all; 0.1 is a common
            choice to protect pretrained features from a freshly initialised head's gradients).
    """

    name = "full"

    def __init__(self, backbone_lr_mult: float = 1.0) -> None:
        check_positive("backbone_lr_mult", backbone_lr_mult)
        self.backbone_lr_mult = backbone_lr_mult

    def backbone_groups(self, blocks):
        return [GroupSpec(f"backbone.{name}", params, self.backbone_lr_mult, 0) for name, params in blocks]
