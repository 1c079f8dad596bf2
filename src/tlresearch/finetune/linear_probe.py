"""Linear probe: the backbone is frozen for the whole run; only the new head trains."""

from __future__ import annotations

from tlresearch.core.errors import ConfigError
from tlresearch.finetune.base import FreezeSchedule, GroupSpec


class LinearProbe(FreezeSchedule):
    """Backbone frozen (eval mode, no gradients); head trains.

    Args:
        cache_features: train the head on backbone features computed once and stored on disk
            (``tlresearch.finetune.cache``) when nothing random happens before the head.
        cache_views: ``0``: cache only without training augmentation; ``K >= 1``: cache K
            augmented views per training image (epoch ``e`` trains on view ``e mod K``).
        decode_on_device: while extracting cached features, decode JPEGs in batches with
            ``torchvision.io.decode_jpeg`` on the extraction device (nvJPEG on CUDA).
    """

    name = "linear_probe"

    def __init__(self, cache_features: bool = True, cache_views: int = 0, decode_on_device: bool = False) -> None:
        for key, value in {"cache_features": cache_features, "decode_on_device": decode_on_device}.items():
            if not isinstance(value, bool):
                raise ConfigError(f"finetune.{key}={value!r} is invalid: use true or false.")
        if isinstance(cache_views, bool) or not isinstance(cache_views, int) or cache_views < 0:
            raise ConfigError(f"finetune.cache_views={cache_views!r} is invalid: use 0 (no augmentation) or K >= 1 augmented views per image.")
        self.cache_features = cache_features
        self.cache_views = cache_views
        self.decode_on_device = decode_on_device

    def backbone_groups(self, blocks):
        return [GroupSpec(f"backbone.{name}", params, 0.0, None) for name, params in blocks]
