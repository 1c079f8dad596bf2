"""The schedule of the literature's linear evaluation: a frozen backbone, L-BFGS logistic regression.

Kornblith, Shlens & Le (2019), "Do Better ImageNet Models Transfer Better?", as used by SimCLR
and BYOL: features of the frozen backbone (evaluation transform, no augmentation), an
L2-regularised multinomial logistic regression solved with L-BFGS, the regularisation strength
chosen among 45 log-spaced values in [1e-6, 1e5] by validation accuracy, then refit on
train + val and evaluated once on test.

``finetune=logistic`` runs it instead of gradient-descent epochs. This module holds what the
config says (the schedule, a linear probe, and its validated :class:`LogisticSettings`); the
solver and the run are the protocol's (``tlresearch.protocols.logistic_solver`` and
``tlresearch.protocols.logistic``), chosen through :meth:`LogisticProbe.protocol`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tlresearch.core.config import check_bool, check_int, require
from tlresearch.finetune.base import ProtocolSettings, check_positive
from tlresearch.finetune.linear_probe import LinearProbe


@dataclass(frozen=True)
class LogisticSettings(ProtocolSettings):
    """What the logistic-regression protocol needs, validated by :class:`LogisticProbe`.

    Args:
        l2_path: the regularisation strengths in the order they are solved (strongest first).
        max_iter, tolerance, history_size: L-BFGS settings of each solve.
        refit: refit on train + val with the chosen value before testing.
        cache_features: store the extracted features for later runs (``False``: memory only).
        decode_on_device: decode JPEGs in batches on the device while extracting.
    """

    l2_path: tuple[float, ...]
    max_iter: int = 1000
    tolerance: float = 1e-4
    history_size: int = 20
    refit: bool = True
    cache_features: bool = True
    decode_on_device: bool = False


class LogisticProbe(LinearProbe):
    """The freeze schedule of ``finetune=logistic`` (a linear probe) and the protocol's settings.

    Args:
        l2_min, l2_max, num_l2: the grid of regularisation strengths (log-spaced, inclusive).
        max_iter: L-BFGS iterations per value at most.
        tolerance: stop when every gradient entry is below this (L-BFGS ``tolerance_grad``).
        history_size: L-BFGS curvature pairs kept.
        refit: refit on train + val with the chosen value before testing (the protocol);
            ``False`` tests the train-only solution.
        cache_features, decode_on_device: as for :class:`LinearProbe` (``cache_features=False``
            extracts into memory only).
    """

    name = "logistic"

    def __init__(
        self,
        l2_min: float = 1e-6,
        l2_max: float = 1e5,
        num_l2: int = 45,
        max_iter: int = 1000,
        tolerance: float = 1e-4,
        history_size: int = 20,
        refit: bool = True,
        cache_features: bool = True,
        decode_on_device: bool = False,
    ) -> None:
        super().__init__(cache_features=cache_features, cache_views=0, decode_on_device=decode_on_device)
        for key, value in {"l2_min": l2_min, "l2_max": l2_max, "tolerance": tolerance}.items():
            check_positive(key, float(value))
        require(not l2_min > l2_max, "finetune.l2_min", l2_min, f"the grid needs l2_min <= l2_max (finetune.l2_max={l2_max}).")
        for key, value in {"num_l2": num_l2, "max_iter": max_iter, "history_size": history_size}.items():
            check_int(f"finetune.{key}", value, minimum=1, fix="use a positive integer.")
        check_bool("finetune.refit", refit)
        self.l2_min, self.l2_max, self.num_l2 = float(l2_min), float(l2_max), num_l2
        self.max_iter, self.tolerance, self.history_size, self.refit = max_iter, float(tolerance), history_size, refit

    def l2_path(self) -> list[float]:
        """The grid, strongest regularisation first (the order it is solved in)."""
        return l2_grid(self.l2_min, self.l2_max, self.num_l2)[::-1]

    def protocol(self) -> LogisticSettings:
        """L-BFGS logistic regression on frozen features instead of the epoch loop."""
        return LogisticSettings(
            l2_path=tuple(self.l2_path()), max_iter=self.max_iter, tolerance=self.tolerance, history_size=self.history_size,
            refit=self.refit, cache_features=self.cache_features, decode_on_device=self.decode_on_device,
        )


def l2_grid(low: float, high: float, num: int) -> list[float]:
    """``num`` log-spaced values from ``low`` to ``high`` inclusive, ascending."""
    if num == 1:
        return [float(low)]
    step = (math.log10(high) - math.log10(low)) / (num - 1)
    return [float(10 ** (math.log10(low) + i * step)) for i in range(num)]
