"""Image priors added to the loss: total variation, L1, L2 and blur.

Each function returns one value per image (``[N]``): images in a batch are separate
problems, so the loss is a sum over images and no image's gradient depends on the others.
``reduction`` says how the pixels of one image are combined:

* ``sum``  — summed over the pixels and channels of the image. Total variation then equals
  ``tf.image.total_variation`` (the lesson's TV), and its size grows with the image area.
* ``mean`` — averaged over the elements of the image: weights carry over between image sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tlresearch.core.config import check_choice, require

REDUCTIONS = ("sum", "mean")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    dims = tuple(range(1, values.ndim))
    return values.sum(dim=dims) if reduction == "sum" else values.mean(dim=dims)


def total_variation(images: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Anisotropic total variation ``Σ|x[i+1,j]-x[i,j]| + Σ|x[i,j+1]-x[i,j]|`` per image."""
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs()
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs()
    return _reduce(dh, reduction) + _reduce(dw, reduction)


def l1_penalty(images: torch.Tensor, anchor: torch.Tensor | float, reduction: str = "mean") -> torch.Tensor:
    """``Σ|x - anchor|`` per image (anchor: mid-grey for ideal images, the source for attacks)."""
    return _reduce((images - anchor).abs(), reduction)


def l2_penalty(images: torch.Tensor, anchor: torch.Tensor | float, reduction: str = "mean") -> torch.Tensor:
    """``Σ(x - anchor)²`` per image (the squared L2 distance, as in weight decay)."""
    return _reduce((images - anchor) ** 2, reduction)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur (kernel ±3σ, reflect padding); the image size is kept."""
    radius = max(1, int(round(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def blur_penalty(images: torch.Tensor, sigma: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """``Σ(x - stopgrad(blur(x)))²`` per image: pulls each step toward a blurred copy of itself
    (Lucid's ``blur_input_each_step``), a soft version of blurring every few steps."""
    return _reduce((images - gaussian_blur(images.detach(), sigma)) ** 2, reduction)


@dataclass(frozen=True)
class Regularizers:
    """Weights of the image priors; ``0`` switches one off.

    Args:
        tv, l1, l2, blur: weights of total variation, L1, squared L2 and blur penalties.
        blur_sigma: standard deviation (pixels) of the blur penalty's Gaussian.
        reduction: ``sum`` or ``mean`` over the pixels of each image (module docstring).
        start: fraction of the steps after which the priors switch on (lesson: 0.5, i.e. the
            second 1000 of 2000 steps); 0 = from the first step.
    """

    tv: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    blur: float = 0.0
    blur_sigma: float = 1.0
    reduction: str = "mean"
    start: float = 0.0

    def validate(self, key: str) -> None:
        for name in ("tv", "l1", "l2", "blur"):
            value = getattr(self, name)
            require(value >= 0, f"{key}.{name}", value, "a regulariser weight must be >= 0 (0 switches it off).")
        require(self.blur_sigma > 0, f"{key}.blur_sigma", self.blur_sigma, "use a standard deviation > 0 pixels, e.g. 1.0.")
        check_choice(f"{key}.reduction", self.reduction, REDUCTIONS)
        require(0 <= self.start < 1, f"{key}.start", self.start, "use a fraction of the steps in [0, 1).")

    @property
    def any(self) -> bool:
        """True when at least one prior has a non-zero weight."""
        return any((self.tv, self.l1, self.l2, self.blur))

    def active_at(self, step: int, steps: int) -> bool:
        """True when the priors apply at ``step`` of ``steps``."""
        return self.any and step >= int(self.start * steps)

    def __call__(self, images: torch.Tensor, anchor: torch.Tensor | float) -> torch.Tensor:
        """The weighted sum of the priors, one value per image."""
        loss = images.new_zeros(images.shape[0])
        if self.tv:
            loss = loss + self.tv * total_variation(images, self.reduction)
        if self.l1:
            loss = loss + self.l1 * l1_penalty(images, anchor, self.reduction)
        if self.l2:
            loss = loss + self.l2 * l2_penalty(images, anchor, self.reduction)
        if self.blur:
            loss = loss + self.blur * blur_penalty(images, self.blur_sigma, self.reduction)
        return loss
