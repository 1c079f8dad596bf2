"""Exact resume: a run killed at any step and resumed ends as if it had never stopped.

What a checkpoint must carry beyond Lightning's own state (weights, optimizer with every param
group, LR scheduler, loop counters, callbacks):

* the data position: the training loader's
  :class:`~tlresearch.data.sampler.ResumableRandomSampler` holds it (saved with the DataModule's
  state), and :class:`ResumeState` tells it after every batch how far training got;
* the global RNG states (torch CPU and CUDA, numpy, python), used by the training step itself
  (dropout, stochastic depth): :class:`ResumeState` stores them and puts them back just before
  the first resumed batch. (Augmentation does not use them: each image has its own seed.)
* the freeze schedule needs nothing: which groups train is a function of the epoch, and the
  classifier re-applies it when training starts (Lightning skips ``on_train_epoch_start`` when
  it resumes mid-epoch).

:class:`LastCheckpoint` writes ``last.ckpt`` at the end of every epoch, with
``every_n_train_steps`` every N optimizer steps, and after the step during which the process
received SIGTERM (then the run exits with code 143); ``resume=auto`` continues from it.
:func:`check_resume_checkpoint` refuses, before any work, a checkpoint that cannot continue this
config (other classes, backbone, schedule, optimizer).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint

from tlresearch.checkpoints.storage import read_checkpoint
from tlresearch.core.config import check_int
from tlresearch.core.errors import ConfigError
from tlresearch.data.sampler import resumable_sampler_of

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"


# ------------------------------------------------------------------------------- RNG states


def capture_rng_states() -> dict[str, Any]:
    """The global RNG states, as plain data and tensors (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back states captured by :func:`capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


# ------------------------------------------------------------------------------- callbacks


class ResumeState(pl.Callback):
    """Keeps what Lightning does not checkpoint by itself: the training loader's position and the RNG states.

    After each training batch it records (epoch, samples trained on) in the training loader's
    :class:`~tlresearch.data.sampler.ResumableRandomSampler`, whose state the DataModule puts
    into checkpoints. Its own state is the RNG states at checkpoint time, restored when the
    resumed run starts training.
    """

    def __init__(self) -> None:
        self._rng_to_restore: dict[str, Any] | None = None

    @staticmethod
    def _set_progress(trainer: pl.Trainer, epoch: int, batches_done: int) -> None:
        loader = trainer.train_dataloader
        sampler = resumable_sampler_of(loader)
        if sampler is not None:
            sampler.set_progress(epoch, batches_done * (getattr(loader, "batch_size", None) or 1))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set_progress(trainer, trainer.current_epoch, 0)
        # Lightning sets the epoch of the loader's sampler too; set here as well so that the order
        # never depends on whether Lightning found it.
        sampler = resumable_sampler_of(trainer.train_dataloader)
        if sampler is not None:
            sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._set_progress(trainer, trainer.current_epoch, batch_idx + 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set_progress(trainer, trainer.current_epoch + 1, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")


class LastCheckpoint(Checkpoint):
    """Writes ``<dirpath>/last.ckpt`` after every training epoch (after its validation, so the best
    checkpoint's bookkeeping is current) and, when ``every_n_train_steps`` is set, every N
    optimizer steps, for resuming mid-epoch.

    Lightning runs checkpoint callbacks after all others, so the NaN guard stops the run before
    a broken state could be written; the write itself is atomic
    (:class:`~tlresearch.checkpoints.storage.AtomicCheckpointIO`).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None) -> None:
        self.every_n_train_steps = check_int(
            "callbacks.last_checkpoint.every_n_train_steps", every_n_train_steps, minimum=1, optional=True,
            fix="use a positive number of optimizer steps, or null to write last.ckpt at the end of each epoch only.",
        )
        self.dirpath = Path(dirpath)
        self._saved_step: int | None = None

    @property
    def path(self) -> Path:
        """Where ``last.ckpt`` goes."""
        return self.dirpath / LAST_CHECKPOINT

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        # SIGTERM (SLURM's pre-emption or time-limit notice): write last.ckpt now, after this step;
        # Lightning then stops the run with its SIGTERMException. Under DDP every rank writes
        # together (the save is collective) when any rank was signalled.
        stopping = trainer.strategy.reduce_boolean_decision(trainer.received_sigterm, all=False)
        due = bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0
        # With gradient accumulation several batches share a step: write once, after the step.
        if (stopping or due) and step != self._saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
        self._saved_step = trainer.global_step


# ------------------------------------------------------------------------------- checks

#: Hyper-parameters that do not change what a resumed run computes.
_FREE_HPARAMS = {"backbone.weights", "compile", "channels_last"}
#: Hyper-parameters that are config groups of their own (the others come from data or model.*).
_GROUP_HPARAMS = ("backbone", "finetune", "optimizer", "scheduler")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def hparam_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: saved -> current"`` for each hyper-parameter that differs (those in ``_FREE_HPARAMS`` aside)."""
    before, after = _flatten(dict(saved)), _flatten(dict(current))
    diffs = []
    for key in sorted(set(before) | set(after)):
        if key in _FREE_HPARAMS or before.get(key) == after.get(key):
            continue
        diffs.append(f"{_config_key(key)}: {_short(before.get(key))} in the checkpoint, {_short(after.get(key))} now")
    return diffs


def _config_key(hparam: str) -> str:
    """The config key behind a classifier hyper-parameter (``dropout`` -> ``model.dropout``)."""
    top = hparam.split(".", 1)[0]
    if top in ("num_classes", "class_names"):
        return f"{hparam} (from data)"
    return hparam if top in _GROUP_HPARAMS else f"model.{hparam}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_resume_checkpoint(path: str | Path, model: pl.LightningModule, key: str = "ckpt_path") -> int:
    """Raise a ConfigError unless the checkpoint at ``path`` can continue training ``model``;
    return its global step (where the resumed run continues).

    It must be a full training checkpoint (optimizer and loop state, not weights only), readable
    with ``weights_only=True``, of a model with the same classes, backbone, freeze schedule,
    optimizer, scheduler and head options: a resumed run continues the checkpoint's run, and
    Lightning would otherwise fail midway (shape mismatches) or silently restore the
    checkpoint's optimizer settings.
    """
    ckpt = read_checkpoint(path, key, mmap=True)
    missing = [k for k in ("state_dict", "optimizer_states", "loops") if k not in ckpt]
    if missing:
        raise ConfigError(
            f"{key}={str(path)!r} cannot be resumed from: it lacks {', '.join(missing)} (a weights-only or foreign "
            "checkpoint). Resume from a checkpoint of a tlresearch.train run directory (checkpoints/last.ckpt)."
        )
    saved = dict(ckpt.get("hyper_parameters") or {})
    # A model may know older spellings of its settings (e.g. TransferClassifier.current_hparams):
    # a run interrupted before a rename still compares equal to the same run today.
    upgrade = getattr(model, "current_hparams", None)
    diffs = hparam_differences(upgrade(saved) if upgrade is not None else saved, dict(model.hparams))
    if diffs:
        raise ConfigError(
            f"{key}={str(path)!r} was written by a run with other settings, so it cannot be continued with this "
            f"config: {'; '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}. Resume with the settings of that run "
            "(its .hydra/overrides.yaml), or start a new run without ckpt_path/resume."
        )
    return int(ckpt.get("global_step", 0))
