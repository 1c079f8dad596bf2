"""The network under study: frozen, in eval mode, with its input normalisation inside.

Image optimisation works in [0, 1] pixel space: every optimiser step, clamp, projection onto
an ε-ball and 8-bit rounding happens on the images a person would see. The wrapper
:class:`FrozenClassifier` turns such images into the normalised input the network expects,
so nothing outside it knows about mean and std.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlresearch.core.errors import ConfigError, suggest
from tlresearch.core.instantiate import instantiate_node
from tlresearch.models.classifier import load_classifier

log = logging.getLogger(__name__)


class FrozenClassifier(nn.Module):
    """``features -> head`` classifier on [0, 1] images; frozen and always in eval mode.

    Args:
        features: image (normalised) -> feature vector ``[N, D]``.
        head: feature vector -> class logits ``[N, num_classes]``.
        mean, std: per-channel normalisation the network was trained with.
        class_names: one name per logit.
        name: what the network is (for metrics and figure titles).
        input_size: the image size the network was trained at (pixels).
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str],
        name: str = "network",
        input_size: int = 224,
    ) -> None:
        super().__init__()
        self.features_net = features
        self.head = head
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.class_names = list(class_names)
        self.name = name
        self.input_size = int(input_size)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenClassifier:
        """Stay in eval mode whatever the caller asks: BatchNorm statistics and dropout of the
        network under study must never change while images are optimised against it."""
        return super().train(False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature vectors of [0, 1] images."""
        return self.features_net((images - self.mean) / self.std)

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, features)`` of [0, 1] images."""
        feats = self.features(images)
        return self.head(feats), feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of [0, 1] images ``[N, 3, H, W]``."""
        return self.head(self.features(images))


# ----------------------------------------------------------------------------- builders


def network_from_backbone(backbone_cfg: Any, key: str = "backbone") -> FrozenClassifier:
    """The backbone of a config (``conf/backbone/*.yaml``) with its pretrained (ImageNet) head."""
    backbone = instantiate_node(backbone_cfg, key)
    if backbone.pretrained_head is None:
        raise ConfigError(
            f"{key}={backbone.name!r} has no pretrained classification head (a headless timm model?); "
            "pick a backbone with an ImageNet head or study a trained classifier with ckpt_path=<file>."
        )
    out_features = backbone.pretrained_head.out_features
    classes = backbone.pretrained_classes or [f"class_{i}" for i in range(out_features)]
    pre = backbone.preprocessing
    return FrozenClassifier(
        backbone.model, backbone.pretrained_head, pre.mean, pre.std, classes, name=backbone.name, input_size=pre.crop_size
    )


def network_from_checkpoint(ckpt_path: str | Path, key: str = "ckpt_path", trust_targets: Iterable[str] = ()) -> FrozenClassifier:
    """A classifier trained by ``tlresearch.train``; its classes are that dataset's classes
    (``trust_targets``: as :func:`~tlresearch.models.classifier.load_classifier` takes them)."""
    try:
        model = load_classifier(ckpt_path, trust_targets=trust_targets)
    except ConfigError as exc:
        if key == "ckpt_path":
            raise
        raise ConfigError(f"{key}: {exc}") from None
    classes = model.hparams.get("class_names") or [f"class_{i}" for i in range(model.hparams.num_classes)]
    pre = model.backbone.preprocessing
    # The backbone and head are used directly: TransferClassifier.features() skips autograd
    # for a frozen backbone, and image optimisation needs the gradient to the input.
    return FrozenClassifier(
        model.backbone, model.head, pre.mean, pre.std, classes, name=f"{model.backbone.name} ({Path(ckpt_path).name})",
        input_size=pre.crop_size,
    )


def check_image_size(network: FrozenClassifier, image_size: int, key: str = "image_size") -> None:
    """Fail early, with the fix, when the network cannot take images of ``image_size`` pixels."""
    if image_size < 8:
        raise ConfigError(f"{key}={image_size} is too small: use at least 8 pixels (or null for the network's {network.input_size}).")
    device = network.mean.device
    try:
        with torch.no_grad():
            logits = network(torch.full((1, 3, image_size, image_size), 0.5, device=device))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(
            f"{key}={image_size} does not fit the network {network.name} ({type(exc).__name__}: {exc}); "
            f"use image_size={network.input_size} or null."
        ) from None
    if logits.shape[-1] != network.num_classes:
        raise ConfigError(
            f"the network {network.name} gives {logits.shape[-1]} logits but has {network.num_classes} class names."
        )


# ----------------------------------------------------------------------------- class names


def normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def resolve_class(value: Any, class_names: Sequence[str], key: str) -> int:
    """The index of a class given by index (``284``) or by name (``tabby``, ``Persian_cat``).

    Names match case-insensitively, with ``_``/``-`` read as spaces. An unknown name raises a
    ConfigError with the closest class names.
    """
    n = len(class_names)
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not a class: give a class name or an index in [0, {n}).")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if not 0 <= index < n:
            raise ConfigError(f"{key}={value!r} is out of range: class indices go from 0 to {n - 1}.")
        return index
    wanted = normalise_name(value)
    normalised = [normalise_name(c) for c in class_names]
    if wanted in normalised:
        return normalised.index(wanted)
    hint = suggest(wanted, normalised) or suggest(str(value), class_names)
    examples = ", ".join(class_names[:5])
    raise ConfigError(f"{key}={value!r} is not a class of this network ({n} classes, e.g. {examples}).{hint}")


def resolve_classes(values: Any, class_names: Sequence[str], key: str) -> list[int]:
    """:func:`resolve_class` for a list (or a single value); ``None`` gives ``[]``."""
    if values is None:
        return []
    if isinstance(values, (str, int)):
        values = [values]
    return [resolve_class(v, class_names, f"{key}[{i}]" if len(values) > 1 else key) for i, v in enumerate(values)]


def slug(name: str) -> str:
    """A class name as a file-name fragment (``Persian cat`` -> ``persian_cat``)."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "class"
