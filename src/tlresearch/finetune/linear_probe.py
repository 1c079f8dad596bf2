"""Linear probe: the backbone is frozen for the whole run; only the new head trains.

By default (``data.augment.enabled=auto``) the literature's probe: no training augmentation, and
the head trains on features cached once (``tlresearch.protocols.epoch_loop``).
"""

from __future__ import annotations

from tlresearch.core.config import check_bool, check_int
from tlresearch.finetune.base import EpochLoopSettings, FreezeSchedule, GroupSpec


class LinearProbe(FreezeSchedule):
    """Backbone frozen (eval mode, no gradients); head trains.

    Args:
        cache_features: train the head on backbone features computed once and stored on disk
            (the feature cache, ``tlresearch.protocols``) when nothing random happens before the head.
        cache_views: ``0``: no training augmentation under ``data.augment.enabled=auto`` (the
            literature's probe, on features cached once); ``K >= 1``: augment and cache K
            augmented views per training image (epoch ``e`` trains on view ``e mod K``).
            ``data.augment.enabled=true`` with ``0`` augments on images every epoch (no cache).
        decode_on_device: while extracting cached features, decode JPEGs in batches with
            ``torchvision.io.decode_jpeg`` on the extraction device (nvJPEG on CUDA).
    """

    name = "linear_probe"
    keeps_pretrained_base = True

    def __init__(self, cache_features: bool = True, cache_views: int = 0, decode_on_device: bool = False) -> None:
        check_bool("finetune.cache_features", cache_features)
        check_bool("finetune.decode_on_device", decode_on_device)
        check_int("finetune.cache_views", cache_views, minimum=0, fix="use 0 (no augmentation) or K >= 1 augmented views per image.")
        self.cache_features = cache_features
        self.cache_views = cache_views
        self.decode_on_device = decode_on_device

    def backbone_groups(self, blocks):
        return [GroupSpec(f"backbone.{name}", params, 0.0, None) for name, params in blocks]

    def protocol(self) -> EpochLoopSettings:
        """The epoch loop, on cached features under this probe's cache settings."""
        return EpochLoopSettings(self.cache_features, self.cache_views, self.decode_on_device)
