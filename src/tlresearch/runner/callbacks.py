"""Lightning callbacks of our own: throughput measurement and a NaN guard."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from tlresearch.core.errors import ConfigError


class ThroughputMonitor(pl.Callback):
    """Training images per second over whole epochs (data loading included), and fit time."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._epoch_start: float | None = None
        self._epoch_images = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_images += len(batch[1]) if isinstance(batch, (tuple, list)) else len(batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_start is not None:
            self.seconds += time.perf_counter() - self._epoch_start
            self.images += self._epoch_images * trainer.world_size

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


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
