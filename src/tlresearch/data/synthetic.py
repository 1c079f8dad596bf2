"""Synthetic images with a learnable class signal, and the record of what a generator wrote.

Shared by :mod:`tlresearch.data.generate` (Pets, Cats vs Dogs, folders) and
:mod:`tlresearch.data.generate_torchvision` (the torchvision datasets' on-disk formats).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

_GOLDEN = 0.6180339887498949  # spreads class hues evenly around the colour wheel


@dataclass
class Generated:
    """What a generator wrote."""

    root: Path
    dataset: str
    classes: list[str]
    counts: dict[str, int]  # images per split (or "images" when there is no split)
    planted: dict[str, str] = field(default_factory=dict)  # relative path -> kind of bad file
    hint: str = ""  # how to load it

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        planted = f"; planted bad files: {', '.join(f'{p} ({k})' for p, k in self.planted.items())}" if self.planted else ""
        return f"Wrote {self.dataset} ({len(self.classes)} classes: {counts}) to {self.root}{planted}.\n{self.hint}"


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0.0), 1.0), min(max(value, 0.0), 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def render_image(rng: np.random.Generator, class_index: int, coarse_index: int, size: tuple[int, int]) -> Image.Image:
    """A ``size`` (width, height) RGB image of class ``class_index`` in coarse group ``coarse_index``.

    Class signal: foreground hue, shape (ellipse/square/triangle) and stripe frequency and
    orientation. Coarse signal: background hue. Nuisance: position, size, rotation jitter,
    lighting gradient, distractor blobs and pixel noise.
    """
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    bg_hue = 0.58 + coarse_index * _GOLDEN  # group 0 bluish, 1 yellow-orange, then spread around the wheel
    background = _rgb(bg_hue + rng.normal(0, 0.02), 0.35 + rng.uniform(-0.1, 0.1), 0.55 + rng.uniform(-0.1, 0.1))
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(theta) + yy * math.sin(theta)) / max(width, height)
    image = background * (0.75 + 0.5 * (ramp - ramp.min()))[..., None]

    for _ in range(int(rng.integers(1, 4))):  # distractors: small blobs of any colour
        r = rng.uniform(0.05, 0.12) * min(width, height)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        image[blob] = _rgb(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9))

    radius = rng.uniform(0.22, 0.38) * min(width, height)
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    angle = math.pi * ((class_index * 0.381966) % 1.0) + rng.normal(0, 0.15)
    u = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / radius
    v = (-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)) / radius
    kind = class_index % 3
    if kind == 0:
        shape = u**2 + v**2 <= 1.0
    elif kind == 1:
        shape = np.maximum(np.abs(u), np.abs(v)) <= 0.8
    else:
        shape = (v >= -1.0) & (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.5)  # apex up, base down
    frequency = 1.5 + (class_index // 3) % 4
    stripes = np.sin(math.pi * frequency * u + rng.uniform(0, 2 * math.pi)) > 0
    foreground = _rgb(class_index * _GOLDEN + rng.normal(0, 0.015), 0.85, 0.95)
    image[shape & stripes] = foreground
    image[shape & ~stripes] = foreground * 0.45

    image = image + rng.normal(0, 10, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def random_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    return int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1))
