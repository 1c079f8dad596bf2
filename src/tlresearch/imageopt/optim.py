"""Optimisers of image parameters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from tlresearch.core.config import check_choice, require

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class OptimizerSettings:
    """``name`` (sgd | adam), learning rate and SGD momentum."""

    name: str = "adam"
    lr: float = 0.05
    momentum: float = 0.0

    def validate(self, key: str) -> None:
        check_choice(f"{key}.name", self.name, OPTIMIZERS)
        require(self.lr > 0, f"{key}.lr", self.lr, "the learning rate must be > 0, e.g. 0.05 (Adam) or 1.0 (the lesson's SGD).")
        require(0 <= self.momentum < 1, f"{key}.momentum", self.momentum, "use a momentum in [0, 1).")


def make_optimizer(settings: OptimizerSettings, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """A fresh optimiser over ``params``."""
    if settings.name == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    return torch.optim.Adam(params, lr=settings.lr)
