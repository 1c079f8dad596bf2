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
from tlresearch.results.plots import (
    group_identical_series,
    group_label,
    plot_confusion_matrix,
    plot_training_curves,
    read_metrics_csv,
    training_curves_figure,
)

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


# ------------------------------------------------------------------------ readable at a glance

GROUPS = [f"backbone.{b}{s}" for b in ("stem", "layer1", "layer2", "layer3", "layer4") for s in ("", ".no_decay")]
GROUPS += ["head", "head.no_decay"]  # 12 parameter groups, as a ResNet under finetune=full logs them


def write_spiky_csv(path: Path, epochs: int = 15, steps_per_epoch: int = 10, frozen_backbone: bool = False) -> Path:
    """A metrics.csv with one early validation-loss spike (1,750 against train losses near 1)
    and 12 parameter groups; every group shares the head's cosine LR, or (``frozen_backbone``,
    a linear probe) the backbone's 10 groups stay at LR 0."""
    lr_columns = [f"lr-SGD/{g}" for g in GROUPS]
    rows, step = [], 0
    total = epochs * steps_per_epoch
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lr = 0.01 * 0.5 * (1 + math.cos(math.pi * step / total)) + 1e-5
            rows.append({"step": step, **{c: 0.0 if frozen_backbone and "backbone" in c else lr for c in lr_columns}})
            rows.append({"epoch": epoch, "step": step, "train/loss_step": 1.3 - 0.5 * step / total + 0.1 * math.sin(step)})
            step += 1
        val_loss = 1750.0 if epoch == 1 else 1.4 - 0.4 * epoch / epochs
        rows.append({"epoch": epoch, "step": step - 1, "val/loss": val_loss, "val/acc": 0.3 + 0.02 * epoch})
        rows.append({"epoch": epoch, "step": step - 1, "train/loss_epoch": 1.25 - 0.5 * epoch / epochs,
                     "train/acc": 0.25 + 0.03 * epoch})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *lr_columns, "step", "train/acc", "train/loss_epoch",
                                                "train/loss_step", "val/acc", "val/loss"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def lines_of(ax) -> list:
    """The curves of a panel (not the off-scale markers, whose labels start with "_")."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def assert_legends_off_the_data(fig) -> None:
    fig.draw_without_rendering()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            assert not legend.get_window_extent().overlaps(ax.get_window_extent()), ax.get_title()


@pytest.mark.parametrize("frozen_backbone, lr_lines", [(False, 1), (True, 2)])
def test_training_curves_readable_despite_a_loss_spike_and_twelve_lr_groups(tmp_path, frozen_backbone, lr_lines) -> None:
    path = write_spiky_csv(tmp_path / "metrics.csv", frozen_backbone=frozen_backbone)
    data = read_metrics_csv(path)
    fig = training_curves_figure(path)
    loss, accuracy, lr = fig.axes

    # The loss panel shows every train-loss value and every validation loss but the spike.
    low, high = loss.get_ylim()
    train = np.concatenate([data["train/loss_step"], data["train/loss_epoch"]])
    val = data["val/loss"][np.isfinite(data["val/loss"])]
    assert low <= np.nanmin(train) and np.nanmax(train) <= high
    assert low <= val[val < 100].min() and val[val < 100].max() <= high
    assert high < 10 and loss.get_yscale() == "linear"
    # ... and says where the spike went: a marker at the top edge, its value in the title.
    assert "1750" in loss.get_title() and "val/loss" in loss.get_title()
    assert any(line.get_marker() == "^" for line in loss.get_lines())

    # Twelve groups with one LR are one line, named by their groups; frozen groups (LR 0) a second one.
    labels = [line.get_label().replace("\n", " ") for line in lines_of(lr)]
    assert len(labels) == lr_lines
    assert any("backbone.* (10 groups)" in label for label in labels)
    assert lr.get_yscale() == ("symlog" if frozen_backbone else "log")
    assert len(lines_of(accuracy)) == 2
    assert_legends_off_the_data(fig)


def test_loss_spanning_decades_gets_a_log_axis(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    rows = "".join(f"{step},{4.0 * 0.9 ** step}\n" for step in range(60))  # 4 down to ~0.01
    path.write_text("step,train/loss_step\n" + rows)
    (loss, _) = training_curves_figure(path).axes
    assert loss.get_yscale() == "log" and "off scale" not in loss.get_title()


def test_identical_series_are_grouped_and_labelled_by_their_names() -> None:
    same, other = np.array([0.1, np.nan, 0.05]), np.array([0.0, np.nan, 0.0])
    columns = {"lr-AdamW/head": same, "lr-AdamW/head.no_decay": same.copy(), "lr-AdamW/backbone.stem": other,
               "lr-AdamW/backbone.layer1": other.copy(), "lr-AdamW/backbone.layer2": same.copy()}
    grouped = group_identical_series(columns)
    assert list(grouped) == ["lr-AdamW: head* (2 groups), backbone.layer2", "lr-AdamW: backbone.* (2 groups)"]
    assert group_label(["lr-SGD"]) == "lr-SGD"
