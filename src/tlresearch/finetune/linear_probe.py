"""Linear probe: the backbone is frozen for the whole run; only the new head trains."""

from __future__ import annotations

from tlresearch.finetune.base import FreezeSchedule, GroupSpec


class LinearProbe(FreezeSchedule):
    """Backbone frozen (eval mode, no gradients); head trains."""

    name = "linear_probe"

    def backbone_groups(self, blocks):
        return [GroupSpec(f"backbone.{name}", params, 0.0, None) for name, params in blocks]
