"""The epoch-loop protocol: Lightning's ``fit``, fed cached features when the backbone is frozen.

Every schedule whose :meth:`~tlresearch.finetune.base.FreezeSchedule.protocol` returns
:class:`~tlresearch.finetune.base.EpochLoopSettings` trains here. :func:`maybe_cache_features`
is the one decision point of the feature cache: it logs why the cache does or does not apply,
and swaps the image DataModule for a :class:`~tlresearch.protocols.cached_data.CachedFeatureDataModule`
when it does; then the train task's ``fit`` runs the epochs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tlresearch.data.datamodule import ImageClassificationDataModule
from tlresearch.finetune.base import EpochLoopSettings
from tlresearch.protocols.cached_data import cached_datamodule
from tlresearch.protocols.context import RunContext

log = logging.getLogger(__name__)


def cache_decision(settings: EpochLoopSettings, model: Any, datamodule: Any) -> tuple[bool, str]:
    """``(applies, why)``: whether training can run on cached features, and the reason."""
    if not settings.cache_features:
        return False, "finetune.cache_features=false"
    training_blocks = [g.name for g in model.groups if g.name != "head" and g.start_epoch is not None]
    if training_blocks:
        return False, (
            f"backbone blocks train in this schedule ({', '.join(training_blocks[:3])}{', ...' if len(training_blocks) > 3 else ''}): "
            "features change every step"
        )
    if not isinstance(datamodule, ImageClassificationDataModule):
        return False, f"the data module {type(datamodule).__name__} is not an image-classification DataModule"
    views = cached_views(settings, datamodule)
    if datamodule.augmentation.enabled and views == 0:
        return False, (
            "training augmentation is on (data.augment.enabled=true), so every epoch sees new random crops; "
            "set data.augment.enabled=false (the literature's linear probe) or finetune.cache_views=K to cache K augmented views"
        )
    if views:
        return True, f"backbone frozen: {views} augmented views per training image extracted once"
    return True, "backbone frozen and no random augmentation: features extracted once"


def cached_views(settings: EpochLoopSettings, datamodule: ImageClassificationDataModule) -> int:
    """``finetune.cache_views``, or 0 without training augmentation, where every view would be
    the same image."""
    return settings.cache_views if datamodule.augmentation.enabled else 0


def maybe_cache_features(settings: EpochLoopSettings, context: RunContext, model: Any, datamodule: Any) -> Any:
    """The DataModule to fit on: cached features when they apply, else ``datamodule``; logs why."""
    applies, why = cache_decision(settings, model, datamodule)
    if not applies:
        log.info("Feature cache not used: %s.", why)
        return datamodule
    cached = cached_datamodule(
        context, model, datamodule, views=cached_views(settings, datamodule), decode_on_device=settings.decode_on_device
    )
    log.info("Feature cache used: %s (%s).", why, cached.cache.root)
    return cached


def run_epoch_loop(
    settings: EpochLoopSettings, context: RunContext, model: Any, datamodule: Any, fit: Callable[[Any], dict[str, Any]]
) -> tuple[dict[str, Any], Any]:
    """``(fit(datamodule to fit on), that datamodule)``."""
    datamodule = maybe_cache_features(settings, context, model, datamodule)
    return fit(datamodule), datamodule
