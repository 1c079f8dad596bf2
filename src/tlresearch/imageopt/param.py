"""Image parameterisations: what the optimiser actually changes.

* :class:`PixelImage` — the pixels themselves, clamped to [0, 1] after every step (the
  lesson's recipe, and the natural space of adversarial perturbations).
* :class:`FourierImage` — Lucid's recipe: a Fourier spectrum scaled by 1/frequency (so low
  frequencies, which natural images are made of, move first), optionally decorrelated colour
  (a fixed 3x3 colour-correlation square root, from ImageNet statistics), and a sigmoid into
  [0, 1]. Olah et al., "Feature Visualization", Distill 2017.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tlresearch.core.config import check_choice, require

PARAMETERIZATIONS = ("pixel", "fft")
INITS = ("normal", "uniform")

# Square root of ImageNet's colour correlation matrix (Lucid, lucid/optvis/param/color.py).
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
# Lucid divides the FFT image by this constant; larger values start with less saturated images.
FFT_MAGIC = 4.0


@dataclass(frozen=True)
class ParamSettings:
    """How an image is parameterised and initialised."""

    parameterization: str = "pixel"
    init: str = "normal"
    init_std: float | None = None
    decorrelate: bool = True
    decay_power: float = 1.0

    def validate(self, key: str) -> None:
        check_choice(f"{key}.parameterization", self.parameterization, PARAMETERIZATIONS)
        check_choice(f"{key}.init", self.init, INITS)
        ok = self.init_std is None or self.init_std >= 0
        require(ok, f"{key}.init_std", self.init_std, "use a standard deviation >= 0, e.g. 0.1, or null for the default.")
        require(self.decay_power >= 0, f"{key}.decay_power", self.decay_power, "use a power >= 0 (Lucid: 1.0).")

    @property
    def noise_std(self) -> float:
        """``init_std``, or the default of the parameterisation: 0.1 around grey for pixels,
        Lucid's 0.01 for the spectrum."""
        if self.init_std is not None:
            return float(self.init_std)
        return 0.01 if self.parameterization == "fft" else 0.1


class ImageParam(nn.Module):
    """A batch of images in [0, 1] made from trainable parameters."""

    def forward(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. to clamp into the valid range)."""

    @torch.no_grad()
    def freeze_images(self, mask: torch.Tensor, images: torch.Tensor) -> None:
        """Hold the images selected by ``mask`` at ``images`` (per-image early stop)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold single images fixed")


class PixelImage(ImageParam):
    """The pixels are the parameters; clamped into [0, 1] after each step."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.pixels = nn.Parameter(init.detach().clone().clamp_(0, 1))

    def forward(self) -> torch.Tensor:
        return self.pixels

    @torch.no_grad()
    def after_step(self) -> None:
        self.pixels.clamp_(0, 1)

    @torch.no_grad()
    def freeze_images(self, mask: torch.Tensor, images: torch.Tensor) -> None:
        self.pixels[mask] = images[mask]


def frequency_scale(height: int, width: int, decay_power: float, device: torch.device | None = None) -> torch.Tensor:
    """``1 / max(|f|, 1/max(h, w)) ** decay_power`` on the real-FFT frequency grid ``[h, w//2+1]``."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / freqs.clamp(min=1.0 / max(height, width)) ** decay_power


def decorrelate_colors(images: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour channels to RGB with Lucid's normalised correlation square root."""
    matrix = COLOR_CORRELATION_SVD_SQRT.to(images.device, images.dtype)
    matrix = matrix / matrix.norm(dim=0).max()
    return torch.einsum("dc,bchw->bdhw", matrix, images)


class FourierImage(ImageParam):
    """Lucid's FFT parameterisation with optional colour decorrelation and a sigmoid.

    Args:
        batch, size: number of images and their side length.
        generator: RNG of the job (the initial spectrum is random).
        init_std: standard deviation of the initial spectrum (Lucid: 0.01).
        decay_power: spectrum scale ``1/f**decay_power`` (1 = natural-image-like).
        decorrelate: map decorrelated colour channels to RGB before the sigmoid.
    """

    def __init__(
        self,
        batch: int,
        size: int,
        generator: torch.Generator,
        init_std: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
    ) -> None:
        super().__init__()
        device = generator.device
        self.size = size
        self.decorrelate = decorrelate
        self.register_buffer("scale", frequency_scale(size, size, decay_power, device))
        shape = (batch, 3, size, size // 2 + 1, 2)
        self.spectrum = nn.Parameter(init_std * torch.randn(shape, generator=generator, device=device))

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum.contiguous()) * self.scale
        # norm="ortho" is Lucid's irfft2d(spectrum * sqrt(h*w)).
        image = torch.fft.irfftn(spectrum, s=(self.size, self.size), dim=(-2, -1), norm="ortho") / FFT_MAGIC
        if self.decorrelate:
            image = decorrelate_colors(image)
        return torch.sigmoid(image)


def noise_images(batch: int, size: int, generator: torch.Generator, init: str, init_std: float) -> torch.Tensor:
    """Random start images in [0, 1]: ``uniform`` noise, or ``normal`` noise around mid-grey."""
    shape = (batch, 3, size, size)
    if init == "uniform":
        return torch.rand(shape, generator=generator, device=generator.device)
    return (0.5 + init_std * torch.randn(shape, generator=generator, device=generator.device)).clamp_(0, 1)


def make_param(settings: ParamSettings, batch: int, size: int, generator: torch.Generator) -> ImageParam:
    """The image parameterisation of ``settings``, randomly initialised from ``generator``."""
    if settings.parameterization == "fft":
        return FourierImage(batch, size, generator, settings.noise_std, settings.decay_power, settings.decorrelate)
    return PixelImage(noise_images(batch, size, generator, settings.init, settings.noise_std))

