"""Speed settings shared by training, feature extraction and the benchmarks.

Each helper answers one question the same way everywhere: is this network convolutional,
should it run in channels_last memory format on this device, which autocast context does a
Lightning precision string mean, which device does a trainer config point at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tlresearch.core.errors import ConfigError

CHANNELS_LAST_CHOICES = ("auto", True, False)


def is_convolutional(module: nn.Module) -> bool:
    """True when ``module`` holds a 2-d convolution (channels_last only changes those)."""
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def check_channels_last(value: Any, key: str = "model.channels_last") -> bool | str:
    """``"auto"``, ``True`` or ``False``; anything else is a ConfigError naming ``key``."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ConfigError(
        f"{key}={value!r} is invalid: use auto (on for convolutional backbones on CUDA), true or false."
    )


def channels_last_wanted(setting: bool | str, module: nn.Module, device: torch.device) -> bool:
    """Whether to run ``module`` in channels_last on ``device``.

    ``auto`` turns it on for convolutional networks on CUDA, where cuDNN's NHWC kernels are
    faster (tensor cores under mixed precision); on CPUs it is left off because the gain is
    small and model-dependent. ``True`` forces it on for any convolutional network.
    """
    setting = check_channels_last(setting)
    if setting is False or not is_convolutional(module):
        return False
    return setting is True or torch.device(device).type == "cuda"


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert the 4-d parameters and buffers of ``module`` to channels_last, in place."""
    return module.to(memory_format=torch.channels_last)


def autocast_dtype(precision: str | int | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision (``bf16-mixed`` -> bfloat16; ``32-true`` -> None)."""
    text = str(precision or "32")
    if text.startswith("bf16"):
        return torch.bfloat16
    if text in {"16", "16-mixed", "16-true"}:
        return torch.float16
    return None


@contextlib.contextmanager
def autocast_for(device: torch.device | str, precision: str | int | None) -> Iterator[None]:
    """Autocast as Lightning runs ``precision`` on ``device`` (nothing for full precision).

    float16 autocast is CUDA-only in practice; on a CPU it falls back to full precision.
    """
    device = torch.device(device)
    dtype = autocast_dtype(precision)
    if dtype is None or (dtype is torch.float16 and device.type != "cuda"):
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def device_of_trainer_config(trainer_cfg: Any) -> torch.device:
    """The device a ``trainer`` config node points at, for work done outside a Trainer.

    ``gpu``/``cuda`` without CUDA is a ConfigError (as Lightning would refuse it);
    ``auto`` picks CUDA when available.
    """
    accelerator = str((trainer_cfg or {}).get("accelerator", "cpu")).lower()
    if accelerator in {"gpu", "cuda"}:
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA device is available; use trainer=cpu.")
        return torch.device("cuda")
    if accelerator == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator not in {"cpu", "auto"}:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not supported here; use cpu, gpu or auto.")
    return torch.device("cpu")
