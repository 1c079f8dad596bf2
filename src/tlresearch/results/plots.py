"""PNG plots of runs: training curves, confusion matrices and result-table bar charts.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through ``pyplot``:
no global backend or figure state is touched (safe in DataLoader workers, threads and
headless machines), and nothing stays open after a call. Every PNG is written atomically
(:func:`tlresearch.core.files.atomic_write`), so a crash never leaves half an image.
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlresearch.core.errors import ConfigError
from tlresearch.core.files import atomic_write
from tlresearch.results.aggregate import Table, is_accuracy_like
from tlresearch.results.formats import cell_parts
from tlresearch.results.grouping import format_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_X_COLUMNS = ("step", "epoch")


# ----------------------------------------------------------------------------- training curves


def read_metrics_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read Lightning's CSVLogger ``metrics.csv`` into ``{column: float array}``, NaN for blanks.

    Lightning writes one row per logging call with blanks for the columns not logged then,
    so most cells are empty; non-numeric cells also become NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass the metrics.csv written by Lightning's CSVLogger "
                          "(in the run directory under csv/…/metrics.csv).")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        names = [n for n in (reader.fieldnames or []) if n]
        columns: dict[str, list[float]] = {n: [] for n in names}
        for row in reader:
            for name in names:
                columns[name].append(_to_float(row.get(name)))
    return {name: np.asarray(values, dtype=float) for name, values in columns.items()}


def _to_float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def plot_training_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Plot the loss and accuracy curves of a run (plus learning rates when logged) to a PNG;
    returns ``out_png``. The figure is :func:`training_curves_figure`'s."""
    return _save(training_curves_figure(metrics_csv), out_png)


def training_curves_figure(metrics_csv: str | os.PathLike) -> Figure:
    """The training-curves figure, readable at a glance whatever the run logged.

    Works with whatever columns exist: every column with "loss" in its name goes to the loss
    panel, every accuracy-like column (acc, top5, f1, …) to the accuracy panel, ``lr-*``
    columns to a learning-rate panel. The x axis is the global ``step`` (``epoch`` when there
    is no step), so per-step and per-epoch series share one axis.

    * Loss: a point more than :data:`OFF_SCALE_FACTOR` times the highest series median (an early
      validation-loss spike of 1,750 against losses near 1) would flatten every other curve to a
      line at zero; the y-limits exclude such points, which are marked ▲ at the top edge and
      named with their value in the panel title. When the rest still spans two decades or more
      (a loss falling from 4 to 0.01), the axis is logarithmic; otherwise linear, where changes
      of a loss near 1 read best.
    * Learning rate: parameter groups whose LR is the same at every step are one line, labelled
      with their names (``lr-SGD: backbone.* (10 groups), head* (2 groups)``). Log scale when
      every LR is positive (schedules span decades); with frozen groups at LR 0, a symmetric-log
      scale that draws them at 0 under the others.
    * Legends stand outside the axes, to their right, never on the data.
    """
    data = read_metrics_csv(metrics_csv)
    x_name, x = _x_axis(data)
    series = {n: v for n, v in data.items() if n not in _X_COLUMNS and np.isfinite(v).any()}
    panels: list[tuple[str, dict[str, np.ndarray]]] = [
        ("loss", {n: v for n, v in series.items() if "loss" in n.lower()}),
        ("accuracy", {n: v for n, v in series.items() if "loss" not in n.lower() and is_accuracy_like(n)}),
    ]
    lr_columns = {n: v for n, v in series.items() if n.lower().startswith("lr-") or n.lower() in ("lr", "learning_rate")}
    if lr_columns:
        panels.append(("learning rate", group_identical_series(lr_columns)))

    fig = _figure(figsize=(6.5 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels):
        _plot_series(ax, x, curves, title, x_name)
        if title == "loss":
            _fit_loss_axis(ax, x, curves)
        elif title == "learning rate":
            _set_lr_scale(ax, curves)
    # e.g. "12-00-00/3/csv/version_0": enough of the path to tell runs apart
    fig.suptitle("/".join(Path(metrics_csv).resolve().parent.parts[1:][-4:]) or "training curves", fontsize=10)
    return fig


#: A loss point above this many times the highest series median is off the loss panel's scale.
OFF_SCALE_FACTOR = 30.0


def _x_axis(data: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    for name in _X_COLUMNS:
        if name in data and np.isfinite(data[name]).any():
            return name, data[name]
    length = len(next(iter(data.values()), []))
    return "row", np.arange(length, dtype=float)


def _plot_series(ax: Axes, x: np.ndarray, series: dict[str, np.ndarray], title: str, x_name: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(x_name)
    if not series:
        ax.text(0.5, 0.5, f"no {title} columns in metrics.csv", ha="center", va="center",
                transform=ax.transAxes, fontsize=9, color="0.4")
        return
    for name, y in series.items():
        keep = np.isfinite(x) & np.isfinite(y)
        per_step = name.endswith("_step")
        # Per-step series are noisy and dense: thin and faint, so the epoch curves stay readable.
        ax.plot(x[keep], y[keep], label=textwrap.fill(name, 32), linewidth=0.8 if per_step else 1.6,
                alpha=0.45 if per_step else 1.0, marker=None if per_step or keep.sum() > 30 else "o",
                markersize=3)
    ax.grid(True, alpha=0.3)
    # Outside the axes, to the right (constrained layout makes room): never over a curve.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def group_identical_series(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns whose values are identical at every row merged into one, labelled by
    :func:`group_label`; order of first appearance kept."""
    groups: list[tuple[np.ndarray, list[str]]] = []
    for name, values in columns.items():
        same = next((names for first, names in groups if np.array_equal(first, values, equal_nan=True)), None)
        if same is None:
            groups.append((values, [name]))
        else:
            same.append(name)
    return {group_label(names): values for values, names in groups}


def group_label(names: Sequence[str]) -> str:
    """``lr-SGD/head`` for one column; for several, their shared prefix and their names grouped by
    first component: ``lr-SGD: backbone.* (10 groups), head* (2 groups)``."""
    if len(names) == 1:
        return names[0]
    prefixes = {n.rsplit("/", 1)[0] for n in names if "/" in n}
    shared = prefixes.pop() if len(prefixes) == 1 and all("/" in n for n in names) else None
    short = [n.rsplit("/", 1)[1] if shared else n for n in names]
    roots: dict[str, list[str]] = {}
    for name in short:
        roots.setdefault(name.split(".", 1)[0], []).append(name)
    parts = [
        members[0] if len(members) == 1
        else f"{root}{'.*' if all(m.startswith(root + '.') for m in members) else '*'} ({len(members)} groups)"
        for root, members in roots.items()
    ]
    return f"{shared}: {', '.join(parts)}" if shared else ", ".join(parts)


def _fit_loss_axis(ax: Axes, x: np.ndarray, curves: dict[str, np.ndarray]) -> None:
    """Y-limits that show every curve's bulk; off-scale points marked at the top edge and named."""
    values = {n: y[np.isfinite(y) & np.isfinite(x)] for n, y in curves.items()}
    pooled = np.concatenate([v for v in values.values() if v.size] or [np.zeros(0)])
    if not pooled.size or pooled.min() < 0:
        return  # nothing drawn, or a loss that can be negative: no notion of "times the median"
    fence = OFF_SCALE_FACTOR * max(float(np.median(v)) for v in values.values() if v.size)
    kept = pooled[pooled <= fence] if fence > 0 else pooled
    low, high = float(kept.min()), float(kept.max())
    if low > 0 and high / low >= 100:
        ax.set_yscale("log")
        ax.set_ylim(low / 1.25, high * 1.25)
    else:
        pad = 0.05 * ((high - low) or abs(high) or 1.0)
        ax.set_ylim(low - pad, high + pad)
    if fence <= 0 or high == pooled.max():
        return
    notes = []
    for line in list(ax.get_lines()):  # a copy: the markers below are lines too
        xs, ys = (np.asarray(a, dtype=float) for a in line.get_data())
        off = ys > fence
        if off.any():
            # x in data units, y at the top edge of the axes: the marker shows where the curve left the panel
            ax.plot(xs[off], np.ones(int(off.sum())), linestyle="none", marker="^", markersize=7,
                    color=line.get_color(), transform=ax.get_xaxis_transform(), clip_on=False)
            top = int(np.argmax(np.where(off, ys, -np.inf)))
            count = f"{int(off.sum())} points, max " if off.sum() > 1 else ""
            notes.append(f"{line.get_label()}: {count}{ys[top]:.4g} at {ax.get_xlabel()} {xs[top]:g}")
    ax.set_title("loss\n▲ off scale: " + "; ".join(notes), fontsize=10)


def _set_lr_scale(ax: Axes, curves: dict[str, np.ndarray]) -> None:
    values = np.concatenate([v[np.isfinite(v)] for v in curves.values()] or [np.zeros(0)])
    positive = values[values > 0]
    if not positive.size or values.min() < 0:
        return
    if positive.size == values.size:
        ax.set_yscale("log")  # schedules span decades (warm-up, cosine to ~0)
    else:
        # Frozen groups at LR 0 next to a schedule: linear below the smallest positive LR, log above.
        ax.set_yscale("symlog", linthresh=float(positive.min()))


# ----------------------------------------------------------------------------- confusion matrix


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], out_png: str | os.PathLike,
                          normalize: bool = True, title: str | None = None) -> Path:
    """Plot a confusion matrix (rows: true class, columns: predicted) with class names on both axes.

    With ``normalize`` each row is divided by its sum (a class with no samples stays 0), so
    the diagonal reads as per-class recall. The figure grows with the number of classes and
    the tick labels shrink and rotate, so 37 pet breeds stay readable; cell values are
    written in the cells only up to 20 classes. Returns ``out_png``.
    """
    m = _as_array(matrix)
    k = len(class_names)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {m.shape}")
    if m.shape[0] != k:
        raise ValueError(f"confusion matrix is {m.shape[0]}x{m.shape[0]} but {k} class names were given")
    if normalize:
        sums = m.sum(axis=1, keepdims=True)
        m = np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)

    side = float(min(30.0, max(5.0, 0.32 * k + 3.0)))
    fontsize = float(max(5.0, min(10.0, 240.0 / max(k, 1))))
    fig = _figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    ticks = np.arange(k)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([str(c) for c in class_names], rotation=90, fontsize=fontsize)
    ax.set_yticklabels([str(c) for c in class_names], fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"), fontsize=11)
    if k <= 20:
        threshold = (np.nanmax(m) if m.size else 0) / 2
        for i in range(k):
            for j in range(k):
                text = f"{m[i, j]:.2f}" if normalize else f"{m[i, j]:g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize * 0.8,
                        color="white" if m[i, j] > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    return _save(fig, out_png)


def _as_array(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "detach"):  # a torch tensor, possibly on a GPU
        matrix = matrix.detach().cpu().numpy()
    return np.asarray(matrix, dtype=float)


# ----------------------------------------------------------------------------- result tables


def plot_table(table: Table, out_png: str | os.PathLike) -> Path:
    """A grouped bar chart of a result table: one group per row, one bar per column, ±std bars.

    A cell with no value is drawn as no bar with its reason (``failed``, ``missing``) written
    at the base; an incomplete cell is annotated with ``n=values/runs``. Returns ``out_png``.
    """
    n_rows, n_cols = max(1, len(table.rows)), max(1, len(table.cols))
    width = 0.8 / n_cols
    fig = _figure(figsize=(min(30.0, max(6.0, 0.9 * n_rows * max(1.0, n_cols * 0.6) + 2.0)), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    centers = np.arange(len(table.rows), dtype=float)
    for j, col in enumerate(table.cols):
        xs = centers - 0.4 + width * (j + 0.5)
        cells = [table.cell(row, col) for row in table.rows]
        heights = [c.mean if c.mean is not None and math.isfinite(c.mean) else 0.0 for c in cells]
        # n < 2: no error bar at all (a zero-length one would claim a std of 0)
        errors = [c.std if c.std is not None else math.nan for c in cells]
        label = ", ".join(f"{k}={format_label(v)}" for k, v in zip(table.col_keys, col)) or table.metric
        ax.bar(xs, heights, width=width * 0.95, yerr=errors, capsize=3, label=label)
        for x, cell in zip(xs, cells):
            number, note = cell_parts(table, cell)
            if number is None and cell.total:
                ax.text(x, 0, note.split(" (")[0], rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")
            elif cell.incomplete:
                top = (cell.mean or 0.0) + (cell.std or 0.0)
                ax.text(x, top, f"n={cell.n}/{cell.total}", ha="center", va="bottom", fontsize=7, color="0.3")
    ax.set_xticks(centers)
    labels = [", ".join(format_label(v) for v in row) or "all runs" for row in table.rows]
    crowded = len(table.rows) > 4
    ax.set_xticklabels(labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8)
    ax.set_xlabel(", ".join(table.row_keys))
    ax.set_ylabel(f"{table.metric} ({table.unit})" if table.unit else table.metric)
    ax.set_title(f"{table.metric}: mean ± sample std over runs", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    if table.col_keys:
        ax.legend(fontsize=8)
    return _save(fig, out_png)


# ----------------------------------------------------------------------------- helpers


def _figure(figsize: tuple[float, float]) -> Figure:
    # Imported here, not at the top: matplotlib takes about a second to import, and train and
    # ``python -m tlresearch.table`` import this module whether or not they plot.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100, layout="constrained")


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    # The temporary file has no .png suffix: name the format explicitly.
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    return out

