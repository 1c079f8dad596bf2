"""Image transforms: evaluation preprocessing comes from the backbone, augmentation from config.

A backbone carries its :class:`Preprocessing` (what its pretrained weights were trained
with: resize, crop, mean, std, interpolation), in the spirit of torchvision's Weights enums.
The DataModule builds its evaluation transform from it, so the network sees exactly the
input distribution it expects; training augmentation is layered on top from config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from tlresearch.core.config import require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone's inputs must look: resize the short side, centre-crop, normalise."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def with_crop_size(self, crop_size: int) -> Preprocessing:
        """The same preprocessing at another input size, keeping the resize/crop ratio."""
        ratio = self.resize_size / self.crop_size
        return Preprocessing(crop_size, int(round(crop_size * ratio)), self.mean, self.std, self.interpolation)

    @property
    def interpolation_mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)


#: ``data.augment.enabled=auto``: the run's protocol decides whether training augments.
AUTO = "auto"


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation. ``random_resized_crop`` with ``scale`` and ``hflip`` are the usual
    transfer-learning defaults; ``color_jitter`` and ``trivial_augment`` are optional extras.

    ``enabled``: ``True``, ``False`` or ``"auto"`` (the default): the protocol that trains decides
    (``tlresearch.protocols.epoch_loop``): on when backbone blocks train, off for a frozen-backbone
    probe unless it caches augmented views (``finetune.cache_views >= 1``). Until a protocol
    decides (a DataModule used on its own), ``"auto"`` augments: see :attr:`active`.
    """

    enabled: bool | str = AUTO
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    color_jitter: float = 0.0
    trivial_augment: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        ok = self.enabled is True or self.enabled is False or self.enabled == AUTO
        require(ok, f"{key}.enabled", self.enabled, "use true, false or auto (auto: on when backbone blocks train, "
                "off for a frozen-backbone probe unless finetune.cache_views >= 1).")

    @property
    def active(self) -> bool:
        """Whether the training transform augments: ``enabled``, with an undecided ``"auto"`` as on."""
        return self.enabled is not False


def _to_tensor_normalised(pre: Preprocessing) -> list[Any]:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(pre.mean), list(pre.std))]


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the short side, centre-crop, normalise: the backbone's own evaluation recipe."""
    return T.Compose(
        [
            T.RGB(),
            T.Resize(pre.resize_size, interpolation=pre.interpolation_mode, antialias=True),
            T.CenterCrop(pre.crop_size),
            *_to_tensor_normalised(pre),
        ]
    )


def train_transform(pre: Preprocessing, aug: Augmentation | None) -> T.Compose:
    """Random-resized-crop + flip (+ optional extras) at the backbone's input size; the eval
    transform when augmentation is disabled."""
    if aug is None or not aug.active:
        return eval_transform(pre)
    ops: list[Any] = [
        T.RGB(),
        T.RandomResizedCrop(pre.crop_size, scale=tuple(aug.scale), interpolation=pre.interpolation_mode, antialias=True),
    ]
    if aug.hflip:
        ops.append(T.RandomHorizontalFlip())
    if aug.color_jitter > 0:
        ops.append(T.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    if aug.trivial_augment:
        ops.append(T.TrivialAugmentWide(interpolation=pre.interpolation_mode))
    return T.Compose([*ops, *_to_tensor_normalised(pre)])
