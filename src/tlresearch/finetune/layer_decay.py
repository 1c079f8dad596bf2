"""Layer-wise learning-rate decay: discriminative LRs decaying from the head to the stem."""

from __future__ import annotations

from tlresearch.core.config import require
from tlresearch.finetune.base import FreezeSchedule, GroupSpec


class LayerDecay(FreezeSchedule):
    """Everything trains from epoch 0; the block ``d`` places below the head (``d = 1`` for
    the last block) trains at base LR x ``decay ** d`` (BEiT / ELECTRA style).

    Args:
        decay: per-block multiplier in (0, 1].
    """

    name = "layer_decay"

    def __init__(self, decay: float = 0.75) -> None:
        require(0 < decay <= 1, "finetune.decay", decay, "it must be in (0, 1] (e.g. 0.65-0.85).")
        self.decay = decay

    def backbone_groups(self, blocks):
        n = len(blocks)
        return [GroupSpec(f"backbone.{name}", params, self.decay ** (n - i), 0) for i, (name, params) in enumerate(blocks)]
