"""Plots: training curves from Lightning's metrics.csv, confusion matrices; valid PNGs of sensible size."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlresearch.core.errors import ConfigError
from tlresearch.results.plots import plot_confusion_matrix, plot_training_curves, read_metrics_csv

COLUMNS = ["epoch", "lr-SGD", "lr-SGD/pg1", "step", "train/acc_epoch", "train/acc_step", "train/loss_epoch",
           "train/loss_step", "val/acc", "val/loss", "val/mean_class_acc"]


def write_lightning_csv(path: Path, epochs: int = 3, steps_per_epoch: int = 20) -> Path:
    """A metrics.csv shaped like CSVLogger's: one row per log call, blanks for what was not logged."""
    rows = []
    step = 0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            if step % 5 == 0:
                rows.append({"epoch": epoch, "step": step, "train/loss_step": 2.0 / step,
                             "train/acc_step": 0.1 + step / 100})
                rows.append({"step": step, "lr-SGD": 0.1 * math.cos(step / 100), "lr-SGD/pg1": 0.01})
        rows.append({"epoch": epoch, "step": step, "val/loss": 1.0 / (epoch + 1), "val/acc": 0.5 + epoch / 10,
                     "val/mean_class_acc": 0.45 + epoch / 10})
        rows.append({"epoch": epoch, "step": step, "train/loss_epoch": 1.5 / (epoch + 1),
                     "train/acc_epoch": 0.4 + epoch / 10})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # a truncated file fails here
        return image.size


def test_read_metrics_csv_is_nan_padded(tmp_path: Path) -> None:
    data = read_metrics_csv(write_lightning_csv(tmp_path / "metrics.csv"))
    assert set(data) == set(COLUMNS)
    assert len(data["step"]) == len(data["val/acc"])
    assert np.isfinite(data["val/acc"]).sum() == 3 and np.isnan(data["val/acc"]).sum() > 10


def test_training_curves(tmp_path: Path) -> None:
    out = plot_training_curves(write_lightning_csv(tmp_path / "csv" / "version_0" / "metrics.csv"),
                               tmp_path / "curves.png")
    width, height = png_size(out)
    assert width >= 1200 and 300 <= height <= 1000  # three panels side by side: loss, accuracy, lr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csv", "curves.png"]  # written atomically, no leftovers


@pytest.mark.parametrize(
    "content",
    [
        "epoch,step,weird_metric\n0,1,\n0,2,abc\n",  # no loss or accuracy column at all
        "epoch,step,val/loss\n",  # header only: the job died before the first log
        "val/acc\n0.5\n0.6\n",  # no step or epoch column
    ],
)
def test_training_curves_are_robust(tmp_path: Path, content: str) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(content)
    assert png_size(plot_training_curves(csv_path, tmp_path / "curves.png"))[0] >= 800


def test_training_curves_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        plot_training_curves(tmp_path / "nope.csv", tmp_path / "out.png")


def test_confusion_matrix_scales_with_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    breeds = [f"breed_name_{i:02d}" for i in range(37)]
    big = rng.integers(0, 5, size=(37, 37)) + np.eye(37, dtype=int) * 40
    big[3] = 0  # a class with no test samples: normalising must not divide by zero
    small = torch.tensor([[5, 1], [2, 7]])  # a torch tensor straight from torchmetrics
    w37, h37 = png_size(plot_confusion_matrix(big, breeds, tmp_path / "cm37.png"))
    w2, h2 = png_size(plot_confusion_matrix(small, ["cat", "dog"], tmp_path / "cm2.png", normalize=False))
    assert w37 > 1.5 * w2 and h37 > 1.5 * h2  # room for 37 labels on each axis
    assert 400 <= w2 <= 1000 and w37 <= 3000


def test_confusion_matrix_checks_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 class names"):
        plot_confusion_matrix(np.eye(2), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.ones((2, 3)), ["a", "b"], tmp_path / "x.png")
