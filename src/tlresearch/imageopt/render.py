"""Pictures of the results: one PNG per image, a labelled grid, and the same (with the metrics)
to the run's loggers, W&B included.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never
through ``pyplot`` (no global state, safe on headless machines); every file is written
atomically, so a crash never leaves half an image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytorch_lightning.loggers import Logger, WandbLogger

from tlresearch.core.config import is_number
from tlresearch.core.files import atomic_write
from tlresearch.imageopt.images import to_uint8

GRID_CELL_INCHES = 2.2
WANDB_MAX_IMAGES = 32  # W&B gets the grid and the first 32 PNGs: the page stays quick to load


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Save a ``[3, H, W]`` image in [0, 1] as an 8-bit PNG."""
    array = to_uint8(image).permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(array, mode="RGB")
    return atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))


def magnified_perturbation(adversarial: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The perturbation shown around mid-grey, scaled so its largest pixel reaches 0 or 1;
    returns the image and the magnification."""
    delta = adversarial - source
    largest = float(delta.abs().max())
    factor = 0.5 / largest if largest > 0 else 1.0
    return (0.5 + factor * delta).clamp(0, 1), factor


def _hwc(image: torch.Tensor) -> np.ndarray:
    return to_uint8(image).permute(1, 2, 0).cpu().numpy()


def _save_figure(fig: Any, path: Path) -> Path:
    # matplotlib is imported where a figure is made (here and in _image_axes): it takes about a
    # second to import, and every visualize process (DDP ranks included) imports this module.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


def _image_axes(rows: int, cols: int) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(GRID_CELL_INCHES * cols, (GRID_CELL_INCHES + 0.5) * rows))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def ideal_grid(images: torch.Tensor, records: Sequence[Mapping[str, Any]], path: str | Path, max_rows: int = 16) -> Path:
    """One row per target, one column per seed; titles give the target probability."""
    targets = list(dict.fromkeys(r["target"] for r in records))[:max_rows]
    rows = {t: [i for i, r in enumerate(records) if r["target"] == t] for t in targets}
    cols = max(len(v) for v in rows.values())
    fig, axes = _image_axes(len(targets), cols)
    for row, target in enumerate(targets):
        for col, index in enumerate(rows[target]):
            r = records[index]
            ax = axes[row, col]
            ax.imshow(_hwc(images[index]))
            colour = "green" if r["hit"] else "red"
            ax.set_title(
                f"{r['target_name']} (seed {r['seed']})\np={r['target_prob']:.2f}, top-1 {r['pred_name']}", fontsize=8, color=colour
            )
    return _save_figure(fig, Path(path))


def attack_grid(
    sources: torch.Tensor,
    adversarial: torch.Tensor,
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    max_rows: int = 16,
) -> Path:
    """One row per (source, target): source, magnified perturbation, adversarial image, each
    with the network's predicted class and probability. ``sources`` is indexed by
    ``record["source_index"]``; ``adversarial`` is aligned with ``records``."""
    shown = list(records)[:max_rows]
    fig, axes = _image_axes(len(shown), 3)
    for row, r in enumerate(shown):
        source = sources[r["source_index"]]
        perturbation, factor = magnified_perturbation(adversarial[row], source)
        goal = f"→ {r['target_name']}" if r["target"] >= 0 else "untargeted"
        axes[row, 0].imshow(_hwc(source))
        axes[row, 0].set_title(f"source ({r['label_name']})\n{r['clean_pred_name']} {r['clean_prob']:.2f}", fontsize=8)
        axes[row, 1].imshow(_hwc(perturbation))
        axes[row, 1].set_title(f"perturbation ×{factor:.0f}\nL∞={r['linf'] * 255:.1f}/255, L2={r['l2']:.2f}", fontsize=8)
        axes[row, 2].imshow(_hwc(adversarial[row]))
        colour = "green" if r["success"] else "red"
        axes[row, 2].set_title(f"adversarial {goal}\n{r['adv_pred_name']} {r['adv_prob']:.2f}", fontsize=8, color=colour)
    return _save_figure(fig, Path(path))


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers among flat metrics (booleans, strings and None left out): what loggers take."""
    return {k: v for k, v in metrics.items() if is_number(v)}


def log_to_wandb(run_or_logger: Any, metrics: Mapping[str, Any], images: Mapping[str, str | Path]) -> None:
    """Log the numeric metrics and the PNGs to W&B.

    Args:
        run_or_logger: a ``wandb`` run, or a Lightning ``WandbLogger`` (its ``experiment``).
        metrics: flat metrics; non-numeric values are skipped.
        images: name -> PNG file, logged as ``imageopt/<name>``.
    """
    # Imported here: wandb takes more than a second to import, and most runs log no pictures to it.
    import wandb

    run = getattr(run_or_logger, "experiment", run_or_logger)
    payload: dict[str, Any] = numeric_metrics(metrics)
    payload.update({f"imageopt/{name}": wandb.Image(str(p), caption=name) for name, p in images.items()})
    run.log(payload)


def log_results(logger: Logger, config: Mapping[str, Any], metrics: Mapping[str, Any], pictures: Mapping[str, Path]) -> None:
    """Send a run's config and metrics to one Lightning logger, and close it.

    A W&B logger also gets the grid and the first :data:`WANDB_MAX_IMAGES` PNGs of
    ``pictures`` (name -> PNG file, the grid under ``"grid"``); other loggers get the numbers.
    """
    logger.log_hyperparams(config)
    if isinstance(logger, WandbLogger):
        shown = {"grid": pictures["grid"], **dict(list(pictures.items())[:WANDB_MAX_IMAGES])}
        log_to_wandb(logger, metrics, shown)
    else:
        logger.log_metrics(numeric_metrics(metrics))
    logger.save()
    logger.finalize("success")
