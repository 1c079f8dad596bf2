"""Callbacks that tests attach through config (``+callbacks.<name>._target_=tests.probes.<Class>``)."""

from __future__ import annotations

import json
import os
import signal

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger


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


class BackboneStateProbe(pl.Callback):
    """Keeps the backbone's whole state (parameters and buffers, BatchNorm statistics included)
    at the start and at the end of fit."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}

    @staticmethod
    def _snapshot(pl_module) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in pl_module.backbone.model.state_dict().items()}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = self._snapshot(pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.end = self._snapshot(pl_module)


class KillAtStep(pl.Callback):
    """SIGKILLs its own process when training is about to run optimizer step ``at_step`` (the
    steps before it are done, and checkpoints due after them are written): a crash with no
    chance to clean up, mid-epoch. Used from a subprocess only."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAtStep(pl.Callback):
    """Sets the head's weights to NaN just before optimizer step ``at_step``: that step's loss is
    NaN, as after a divergence, without waiting for one."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.head.parameters():
                    p.fill_(float("nan"))


class InterruptAtStep(pl.Callback):
    """Raises KeyboardInterrupt (what Ctrl-C does) just before optimizer step ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt


class CheckpointFolderProbe(pl.Callback):
    """Records, at the start of each training epoch after the first (when the previous epoch's
    checkpoints are written), the files of ``checkpoints/`` and ``last.ckpt`` as stored on disk
    (``torch.load`` of the file itself, not a reader that completes it)."""

    def __init__(self) -> None:
        self.files: dict[int, list[str]] = {}
        self.last: dict[int, dict] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            return
        folder = trainer.checkpoint_callback.dirpath
        self.files[trainer.current_epoch] = sorted(os.listdir(folder))
        self.last[trainer.current_epoch] = torch.load(os.path.join(folder, "last.ckpt"), map_location="cpu", weights_only=True)


class OptimizerProbe(pl.Callback):
    """Records, before each optimizer step, every param group's LR and the optimizer's state
    step count of its first parameter (``None``: no state, as in a new optimizer), and the
    backbone's parameters at the start of fit and at the end of each epoch."""

    def __init__(self) -> None:
        self.lrs: dict[int, dict[str, float]] = {}
        self.state_steps: dict[int, dict[str, int | None]] = {}
        self.backbone: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _snapshot(pl_module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pl_module.backbone.model.named_parameters()}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.backbone["start"] = self._snapshot(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        step = trainer.global_step
        self.lrs[step] = {g["name"]: g["lr"] for g in optimizer.param_groups}
        self.state_steps[step] = {
            g["name"]: (int(s["step"]) if (s := optimizer.state.get(g["params"][0])) and "step" in s else None)
            for g in optimizer.param_groups
        }

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.backbone[f"epoch{trainer.current_epoch}"] = self._snapshot(pl_module)


class TermAtStep(pl.Callback):
    """Sends SIGTERM (what SLURM sends before pre-emption or at the time limit), or ``signum``
    (e.g. ``SIGUSR2``: SLURM's warning to a submitit job), to its own process when training is
    about to run optimizer step ``at_step``; that step still runs."""

    def __init__(self, at_step: int, signum: str = "SIGTERM") -> None:
        self.at_step = at_step
        self.signum = signal.Signals[signum]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class WandbLogRecorder(pl.Callback):
    """Appends each row that the W&B logger passes to ``wandb.log``, with the rank that passed it,
    to ``path`` (a JSON line each, written at once, so a SIGKILL keeps them): what the run sent to
    W&B, whether or not W&B's own service had saved it when the process died."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._wrapped = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if self._wrapped or not wandb_loggers:
            return
        self._wrapped = True
        run, rank = wandb_loggers[0].experiment, trainer.global_rank
        send = run.log

        def log(row: dict, *args, **kwargs):
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"rank": rank, "row": row}, default=str) + "\n")
            return send(row, *args, **kwargs)

        run.log = log
