"""A callback that makes chosen jobs of a sweep fail, attached through config:
``+callbacks.fail._target_=tests.sweeps.faults.FailWhen +callbacks.fail.key='${seed}' +callbacks.fail.fail_on=1``."""

from __future__ import annotations

import pytorch_lightning as pl


class PlantedFailure(RuntimeError):
    """The error :class:`FailWhen` raises (a stand-in for e.g. CUDA running out of memory)."""


class FailWhen(pl.Callback):
    """Raise :class:`PlantedFailure` when fitting starts, if ``key`` (typically an
    interpolation of the job's settings) equals ``fail_on``."""

    def __init__(self, key: str, fail_on: str) -> None:
        self.key, self.fail_on = str(key), str(fail_on)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.key == self.fail_on:
            raise PlantedFailure(f"planted failure for {self.key}")
