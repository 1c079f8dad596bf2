"""The epoch-loop protocol: Lightning's ``fit``, fed cached features when the backbone is frozen.

Every schedule whose :meth:`~tlresearch.finetune.base.FreezeSchedule.protocol` returns
:class:`~tlresearch.finetune.base.EpochLoopSettings` trains here, in three steps:

1. :func:`apply_augmentation` settles ``data.augment.enabled=auto``: training augments when
   backbone blocks train, or when the schedule caches augmented views (``finetune.cache_views >= 1``);
   a frozen-backbone probe trains on the evaluation transform (the literature's linear probe).
   An explicit ``true``/``false`` wins.
2. :func:`maybe_cache_features`, the one decision point of the feature cache, logs why the cache
   does or does not apply, and swaps the image DataModule for a
   :class:`~tlresearch.protocols.cached_data.CachedFeatureDataModule` when it does.
3. The log and ``metrics.json`` (``protocol``) say what ran, e.g. ``linear_probe on cached
   features, no augmentation (data.augment.enabled=auto: the backbone is frozen)``; then the
   train task's ``fit`` runs the epochs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from tlresearch.data.datamodule import ImageClassificationDataModule
from tlresearch.data.transforms import AUTO, Augmentation
from tlresearch.finetune.base import EpochLoopSettings
from tlresearch.protocols.cached_data import CachedFeatureDataModule, cached_datamodule
from tlresearch.protocols.context import RunContext

log = logging.getLogger(__name__)


def training_blocks(model: Any) -> list[str]:
    """The backbone blocks the schedule ever trains (the head always does)."""
    return [g.name for g in model.groups if g.name != "head" and g.start_epoch is not None]


def augmentation_decision(settings: EpochLoopSettings, model: Any, datamodule: Any) -> tuple[bool, str]:
    """``(augments, why)``: whether training augments. An explicit ``data.augment.enabled`` wins;
    ``auto`` augments when backbone blocks train (fine-tuning) or the schedule caches augmented
    views (``finetune.cache_views >= 1``), and not for a frozen-backbone probe: the literature's
    linear probe trains on the evaluation transform, which the feature cache computes once."""
    augmentation = getattr(datamodule, "augmentation", None)
    if not isinstance(augmentation, Augmentation):
        return False, f"the data module {type(datamodule).__name__} has no data.augment"
    if augmentation.enabled != AUTO:
        return augmentation.active, f"data.augment.enabled={str(augmentation.enabled).lower()}"
    if training_blocks(model):
        return True, "data.augment.enabled=auto: backbone blocks train"
    if settings.cache_views:
        return True, f"data.augment.enabled=auto with finetune.cache_views={settings.cache_views}"
    return False, "data.augment.enabled=auto: the backbone is frozen"


def cache_decision(settings: EpochLoopSettings, model: Any, datamodule: Any) -> tuple[bool, str]:
    """``(applies, why)``: whether training can run on cached features, and the reason."""
    if not settings.cache_features:
        return False, "finetune.cache_features=false"
    training = training_blocks(model)
    if training:
        return False, (
            f"backbone blocks train in this schedule ({', '.join(training[:3])}{', ...' if len(training) > 3 else ''}): "
            "features change every step"
        )
    if not isinstance(datamodule, ImageClassificationDataModule):
        return False, f"the data module {type(datamodule).__name__} is not an image-classification DataModule"
    augments, why = augmentation_decision(settings, model, datamodule)
    views = cached_views(settings, augments)
    if augments and views == 0:
        return False, (
            f"training augmentation is on ({why}), so every epoch sees new random crops; "
            "leave data.augment.enabled=auto or set it to false (the literature's linear probe), "
            "or set finetune.cache_views=K to cache K augmented views"
        )
    if views:
        return True, f"backbone frozen: {views} augmented views per training image extracted once"
    return True, "backbone frozen and no random augmentation: features extracted once"


def cached_views(settings: EpochLoopSettings, augments: bool) -> int:
    """``finetune.cache_views``, or 0 without training augmentation, where every view would be
    the same image."""
    return settings.cache_views if augments else 0


def apply_augmentation(settings: EpochLoopSettings, model: Any, datamodule: Any) -> tuple[bool, str]:
    """Settle ``data.augment.enabled=auto`` on ``datamodule`` (:func:`augmentation_decision`);
    ``(augments, why)``."""
    augments, why = augmentation_decision(settings, model, datamodule)
    if isinstance(datamodule, ImageClassificationDataModule) and datamodule.augmentation.enabled == AUTO:
        datamodule.set_augmentation(dataclasses.replace(datamodule.augmentation, enabled=augments))
    return augments, why


def protocol_description(model: Any, cached: Any, augments: bool, why: str) -> str:
    """One line: the schedule, what the head trains on, the augmentation and why, e.g.
    ``linear_probe on cached features, no augmentation (data.augment.enabled=auto: the backbone is frozen)``."""
    views = getattr(cached, "views", 0) if isinstance(cached, CachedFeatureDataModule) else 0
    source = "cached features" if isinstance(cached, CachedFeatureDataModule) else "images"
    if views:
        augmentation = f"{views} cached augmented views per training image"
    else:
        augmentation = "augmented" if augments else "no augmentation"
    return f"{model.schedule.name} on {source}, {augmentation} ({why})"


def maybe_cache_features(settings: EpochLoopSettings, context: RunContext, model: Any, datamodule: Any) -> Any:
    """The DataModule to fit on: cached features when they apply, else ``datamodule``; logs why."""
    applies, why = cache_decision(settings, model, datamodule)
    if not applies:
        log.info("Feature cache not used: %s.", why)
        return datamodule
    augments, _ = augmentation_decision(settings, model, datamodule)
    cached = cached_datamodule(
        context, model, datamodule, views=cached_views(settings, augments), decode_on_device=settings.decode_on_device
    )
    log.info("Feature cache used: %s (%s).", why, cached.cache.root)
    return cached


def run_epoch_loop(
    settings: EpochLoopSettings, context: RunContext, model: Any, datamodule: Any, fit: Callable[[Any], dict[str, Any]]
) -> tuple[dict[str, Any], Any]:
    """``(fit(datamodule to fit on), that datamodule)``; the metrics name the protocol that ran
    (``protocol``), as the log does."""
    augments, why = apply_augmentation(settings, model, datamodule)
    datamodule = maybe_cache_features(settings, context, model, datamodule)
    protocol = protocol_description(model, datamodule, augments, why)
    log.info("Protocol: %s.", protocol)
    metrics = fit(datamodule)
    return {**metrics, "protocol": protocol}, datamodule
