"""Source images for attacks (decoded, resized, cropped to 8-bit tensors) and 8-bit rounding.

Paths, globs and folders are expanded, and files decoded, by the data layer's
:mod:`tlresearch.data.user_images` (shared with ``tlresearch.predict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2 import functional as TF

from tlresearch.data.user_images import expand_image_paths, open_user_image


@dataclass
class SourceImages:
    """Decoded source images as 8-bit tensors ``[N, 3, S, S]`` and where they came from."""

    paths: list[Path]
    pixels: torch.Tensor

    def __len__(self) -> int:
        return len(self.paths)


def load_image(path: Path, size: int, key: str = "images") -> torch.Tensor:
    """Decode an image as RGB, resize its short side to ``size`` and centre-crop: ``uint8 [3, S, S]``."""
    pixels = TF.pil_to_tensor(open_user_image(path, key))
    pixels = TF.resize(pixels, [size], antialias=True)
    return TF.center_crop(pixels, [size, size])


def load_source_images(patterns: Sequence[str] | str | None, size: int, key: str = "images") -> SourceImages:
    """Expand ``patterns`` (paths, globs, folders) and decode every image, so a bad file fails
    before any optimisation."""
    return decode_sources(expand_image_paths(patterns, key), size, key)


def decode_sources(paths: Sequence[Path], size: int, key: str) -> SourceImages:
    """Decode ``paths`` into :class:`SourceImages` of ``size`` pixels."""
    paths = [Path(p) for p in paths]
    return SourceImages(paths, torch.stack([load_image(p, size, key) for p in paths]))


def dataset_split_sources(datamodule: Any, split: str, max_images: int | None) -> tuple[list[Path], list[str]]:
    """Paths and class names of a DataModule's ``split``, at most ``max_images`` of them taken
    round-robin over the classes (so a few images still cover every class), in a fixed order."""
    by_class: dict[int, list[Any]] = {}
    for sample in datamodule.dataset(split).samples:
        by_class.setdefault(sample.label, []).append(sample)
    groups = [by_class[label] for label in sorted(by_class)]
    ordered = [g[rank] for rank in range(max(map(len, groups), default=0)) for g in groups if rank < len(g)]
    chosen = ordered[:max_images] if max_images is not None else ordered
    return [Path(s.path) for s in chosen], [datamodule.classes[s.label] for s in chosen]


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit pixels -> floats in [0, 1]."""
    return pixels.float() / 255.0


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the nearest 8-bit value, as saving them to PNG does."""
    return torch.round(images.clamp(0, 1) * 255.0) / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> ``uint8`` pixels (rounded)."""
    return torch.round(images.detach().clamp(0, 1) * 255.0).to(torch.uint8)
