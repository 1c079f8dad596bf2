"""A callback that makes chosen jobs of a sweep fail, attached through config:
``+callbacks.fail._target_=tests.sweeps.faults.FailWhen +callbacks.fail.key='${seed}' +callbacks.fail.fail_on=1``."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl
import torch


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


class FaultBySeed(pl.Callback):
    """Make a share of a sweep's jobs fail, each way chosen by the job's ``seed`` (modulo 8):
    1: the loss becomes NaN at the first step (the head's weights set to NaN, as after a
    divergence); 5: :class:`PlantedFailure` when fitting starts; 7, when ``seed % 16 == 7``: the
    job's process SIGKILLs itself when fitting starts (as the out-of-memory killer would); others
    run normally."""

    def __init__(self, seed: int) -> None:
        self.way = int(seed) % 8
        self.kill = int(seed) % 16 == 7

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.way == 5:
            raise PlantedFailure(f"planted failure (way {self.way})")
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.way == 1:
            with torch.no_grad():
                for p in pl_module.head.parameters():
                    p.fill_(float("nan"))
