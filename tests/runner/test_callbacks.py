"""The throughput monitor measures training steps only; the epoch figure is named for what it is."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlresearch.runner.callbacks import ThroughputMonitor

VALIDATION_SLEEP_S = 0.3


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SlowValidation(pl.Callback):
    """Sleeps at the end of every validation (not the sanity check) and records how long."""

    def __init__(self) -> None:
        self.slept = 0.0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        start = time.perf_counter()
        time.sleep(VALIDATION_SLEEP_S)
        self.slept += time.perf_counter() - start


def loader(n: int) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen)), batch_size=8)


def test_train_throughput_excludes_validation(tmp_path):
    monitor, slow = ThroughputMonitor(), SlowValidation()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor, slow],
                         default_root_dir=tmp_path)
    trainer.fit(TinyModule(), train_dataloaders=loader(40), val_dataloaders=loader(16))

    assert monitor.images == monitor.epoch_images == 2 * 40  # every training image of both epochs, once
    assert slow.slept >= 2 * VALIDATION_SLEEP_S
    # The validation ran inside the epochs (Lightning validates before on_train_epoch_end), so it
    # is in the epoch time; the training-step time lies outside it.
    assert monitor.step_seconds > 0
    assert monitor.step_seconds < monitor.epoch_seconds - slow.slept
    figures = monitor.metrics()
    # The old figure (images over epoch time) would fail this: validation sleeps are not training.
    assert figures["throughput/train_img_s"] > monitor.images / (monitor.epoch_seconds - slow.slept)
    assert figures["throughput/epoch_img_s"] == monitor.epoch_images / monitor.epoch_seconds
    assert figures["throughput/train_img_s"] > figures["throughput/epoch_img_s"]
    assert figures["time/train_steps_s"] == monitor.step_seconds


def test_no_training_step_means_no_figure():
    figures = ThroughputMonitor().metrics()
    assert math.isnan(figures["throughput/train_img_s"]) and math.isnan(figures["throughput/epoch_img_s"])
