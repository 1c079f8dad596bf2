"""Transformation robustness: random pad, jitter, scale and rotation before each forward pass.

An image that keeps its class under small random transformations cannot rely on
pixel-exact high-frequency patterns, so optimisation finds more natural-looking features
(Lucid's ``standard_transforms``: pad 12, jitter 8, scale 0.9-1.1, rotate ±10°). All four
act in one differentiable ``grid_sample`` per step, with per-image random parameters drawn
from the job's generator (so runs are reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tlresearch.core.config import require


@dataclass(frozen=True)
class RobustnessTransforms:
    """Random transformations applied to each image at every optimisation step.

    Args:
        enabled: apply them at all.
        pad: pixels of constant padding on each side (the padded image is what the network sees).
        pad_value: value of the padding (0.5: mid-grey).
        jitter: largest random translation, in pixels, in each direction.
        scale: range ``[low, high]`` of the random zoom factor.
        rotate: largest random rotation, in degrees, in each direction.
    """

    enabled: bool = False
    pad: int = 12
    pad_value: float = 0.5
    jitter: int = 8
    scale: Sequence[float] = (0.9, 1.1)
    rotate: float = 10.0

    def validate(self, key: str) -> None:
        require(self.pad >= 0, f"{key}.pad", self.pad, "use a number of pixels >= 0.")
        require(0 <= self.pad_value <= 1, f"{key}.pad_value", self.pad_value, "use a pixel value in [0, 1].")
        require(self.jitter >= 0, f"{key}.jitter", self.jitter, "use a number of pixels >= 0.")
        ok = len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]
        require(ok, f"{key}.scale", list(self.scale), "use [low, high] with 0 < low <= high, e.g. [0.9, 1.1].")
        require(0 <= self.rotate <= 180, f"{key}.rotate", self.rotate, "use a number of degrees in [0, 180].")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Randomly transformed copies of ``images`` (unchanged when disabled)."""
        if not self.enabled:
            return images
        if self.pad:
            images = F.pad(images, (self.pad,) * 4, value=self.pad_value)
        theta = self.random_affine(images.shape[0], images.shape[-2], images.shape[-1], generator)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def random_affine(self, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Per-image affine matrices ``[N, 2, 3]`` (output -> input coordinates, in [-1, 1] units)."""

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, generator=generator, device=generator.device)

        zoom = uniform(float(self.scale[0]), float(self.scale[1]))
        angle = uniform(-self.rotate, self.rotate) * (math.pi / 180)
        shift_x = uniform(-self.jitter, self.jitter) * (2.0 / width)
        shift_y = uniform(-self.jitter, self.jitter) * (2.0 / height)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        return torch.stack(
            [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1
        )
