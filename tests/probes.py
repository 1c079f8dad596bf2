"""Callbacks that tests attach through config (``+callbacks.<name>._target_=tests.probes.<Class>``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class BlockChangeProbe(pl.Callback):
    """Records, at the end of each training epoch, which backbone blocks have changed since
    the start of fit (``changed[epoch] = set of block names``)."""

    def __init__(self) -> None:
        self.changed: dict[int, set[str]] = {}
        self._start: dict[str, torch.Tensor] = {}

    @staticmethod
    def _snapshot(pl_module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pl_module.backbone.model.named_parameters()}

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = self._snapshot(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = self._snapshot(pl_module)
        changed = {n for n in now if not torch.equal(now[n], self._start[n])}
        self.changed[trainer.current_epoch] = {b.name for b in pl_module.backbone.blocks if any(b.owns(n) for n in changed)}
