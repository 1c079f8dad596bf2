"""Lightning callbacks of our own: throughput measurement (training steps only, and whole epochs) and a NaN guard."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from tlresearch.core.errors import ConfigError


class ThroughputMonitor(pl.Callback):
    """Training speed, measured where the training happens.

    * ``throughput/train_img_s``: training images over the time spent *inside training steps*,
      from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, optimizer step),
      with a CUDA synchronise at both ends on a GPU so that queued kernels are counted. Loading the
      batch and copying it to the device happen before ``on_train_batch_start`` and are *not*
      included; nor are validation, checkpoints, or logging between steps. It is the speed of the
      model's steps, comparable across data pipelines.
    * ``throughput/epoch_img_s``: training images over the wall time of whole training epochs,
      ``on_train_epoch_start`` to ``on_train_epoch_end``: data loading, validation (Lightning
      validates before ``on_train_epoch_end``) and checkpoints included. What a user waits for.
    * ``time/train_steps_s``: the seconds inside training steps behind ``train_img_s``.

    Images are counted on this process and multiplied by the world size (every rank steps together).
    """

    def __init__(self) -> None:
        self.images = 0
        self.step_seconds = 0.0
        self.epoch_images = 0
        self.epoch_seconds = 0.0
        self._epoch_start: float | None = None
        self._epoch_images = 0
        self._step_start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _synchronize(pl_module)  # work queued before this step (the batch's copy) is not the step's
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._step_start is None:
            return
        _synchronize(pl_module)  # the step's kernels have run, not only been queued
        self.step_seconds += time.perf_counter() - self._step_start
        self._step_start = None
        images = _batch_size(batch) * trainer.world_size
        self.images += images
        self._epoch_images += images

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_start is not None:
            self.epoch_seconds += time.perf_counter() - self._epoch_start
            self.epoch_images += self._epoch_images
            self._epoch_start = None

    @property
    def images_per_second(self) -> float:
        """Training images per second inside training steps (``throughput/train_img_s``)."""
        return _rate(self.images, self.step_seconds)

    def metrics(self) -> dict[str, float]:
        """The figures for ``metrics.json``, each named for what it measures (see the class)."""
        return {
            "throughput/train_img_s": self.images_per_second,
            "throughput/epoch_img_s": _rate(self.epoch_images, self.epoch_seconds),
            "time/train_steps_s": self.step_seconds,
        }


def _synchronize(pl_module) -> None:
    device = getattr(pl_module, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(batch) -> int:
    return len(batch[1]) if isinstance(batch, (tuple, list)) else len(batch)


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


class NonFiniteLossGuard(pl.Callback):
    """Stop the run at the first NaN or infinite training loss, naming the step and likely causes.

    Checkpoints already written are kept; ``last.ckpt`` is not overwritten with the broken state.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {batch_idx}). Likely causes: a learning rate too high "
                "for this optimizer (try optimizer.lr ten times smaller or a warm-up, scheduler.warmup_epochs=1), "
                "fp16 overflow (use trainer.precision=bf16-mixed or 32), or corrupt input data. "
                "The last good checkpoint is kept in the run's checkpoints/ folder."
            )


class NonFiniteLossError(ConfigError):
    """The loss became NaN or infinite: reported like a user mistake (a clean message, a
    non-zero exit code), since its causes are settings and data, not our code."""
