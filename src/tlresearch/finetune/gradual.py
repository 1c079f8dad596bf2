"""Gradual unfreezing (ULMFiT-style): the head first, then backbone blocks from the top down."""

from __future__ import annotations

from tlresearch.core.config import require
from tlresearch.finetune.base import FreezeSchedule, GroupSpec, check_positive


class GradualUnfreeze(FreezeSchedule):
    """Head from epoch 0; the last ``blocks_per_step`` backbone blocks unfreeze at
    ``start_epoch``, the next ones ``every`` epochs later, and so on down to the stem
    (or until ``max_blocks`` blocks are unfrozen; the rest stay frozen).

    Args:
        start_epoch: epoch at which the first (top) blocks unfreeze; >= 1.
        every: epochs between two unfreezing steps; >= 1.
        blocks_per_step: how many blocks unfreeze at each step.
        max_blocks: unfreeze at most this many blocks (None: all).
        backbone_lr_mult: LR multiplier of every backbone block.
    """

    name = "gradual"

    def __init__(
        self,
        start_epoch: int = 1,
        every: int = 1,
        blocks_per_step: int = 1,
        max_blocks: int | None = None,
        backbone_lr_mult: float = 1.0,
    ) -> None:
        require(not start_epoch < 1, "finetune.start_epoch", start_epoch, "the head trains alone first, so use >= 1.")
        for key, value in {"every": every, "blocks_per_step": blocks_per_step, "backbone_lr_mult": backbone_lr_mult}.items():
            check_positive(key, value)
        if max_blocks is not None:
            check_positive("max_blocks", max_blocks, allow_zero=True)
        self.start_epoch = start_epoch
        self.every = every
        self.blocks_per_step = blocks_per_step
        self.max_blocks = max_blocks
        self.backbone_lr_mult = backbone_lr_mult

    def unfreeze_epoch(self, depth: int) -> int | None:
        """Epoch at which the block ``depth`` places below the top (0 = last block) unfreezes."""
        if self.max_blocks is not None and depth >= self.max_blocks:
            return None
        return self.start_epoch + (depth // self.blocks_per_step) * self.every

    def backbone_groups(self, blocks):
        n = len(blocks)
        return [
            GroupSpec(f"backbone.{name}", params, self.backbone_lr_mult, self.unfreeze_epoch(n - 1 - i))
            for i, (name, params) in enumerate(blocks)
        ]
