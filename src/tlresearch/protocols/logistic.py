"""The logistic-regression protocol as a training run: it replaces the epoch loop.

Runs for schedules whose :meth:`~tlresearch.finetune.base.FreezeSchedule.protocol` returns
:class:`~tlresearch.finetune.logistic.LogisticSettings` (``finetune=logistic``): features of the
frozen backbone (evaluation transform, read from the feature cache or extracted once), the
regularisation path of ``protocols/logistic_solver.py``, the choice by validation accuracy, the
refit on train + val, one test.

The run directory gets what other runs write (``metrics.json`` with ``test/*``,
``val/best_mean_class_acc``, ``params/*``, ``time/*``; ``checkpoints/last.ckpt`` that
:func:`tlresearch.models.classifier.load_classifier` reads) plus ``logistic/l2`` and
``logistic_path.json`` (every value's validation scores).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from tlresearch.core.errors import ConfigError
from tlresearch.core.files import atomic_write, write_json_atomic
from tlresearch.finetune.logistic import LogisticSettings
from tlresearch.models.classifier import TransferClassifier
from tlresearch.protocols.cached_data import cached_datamodule
from tlresearch.protocols.context import RunContext
from tlresearch.protocols.logistic_solver import SELECTION_METRIC, LinearSolution, fit_multinomial_logistic, regularization_path, score

log = logging.getLogger(__name__)


def run_logistic(
    settings: LogisticSettings, context: RunContext, model: TransferClassifier, datamodule: Any, fit: Callable[[Any], dict[str, Any]]
) -> tuple[dict[str, Any], Any]:
    """Run the protocol instead of ``fit`` (which is not called): features, path, selection,
    refit, test.

    Fills ``model``'s head with the final solution, writes ``checkpoints/last.ckpt`` and
    ``logistic_path.json`` into the run directory; returns ``(metrics, feature DataModule)``
    (the caller writes ``metrics.json`` and the other run records).
    """
    out_dir = context.output_dir
    device = context.device
    started = time.perf_counter()
    if len(datamodule.dataset("val")) == 0:
        raise ConfigError(
            "finetune=logistic chooses its regularisation on the validation split, but the data has no validation "
            "images; give the dataset a val split (e.g. data.val_per_class=20 for pets, data.val_fraction=0.1 for folders)."
        )
    features = cached_datamodule(
        context, model, datamodule, views=0, decode_on_device=settings.decode_on_device, persist=settings.cache_features, device=device
    )
    sets = {split: features.features(split).to(device) for split in ("train", "val", "test")}
    data = {split: (s.features[0].float(), s.labels) for split, s in sets.items()}
    extract_s = time.perf_counter() - started

    solver = {"max_iter": settings.max_iter, "tolerance": settings.tolerance, "history_size": settings.history_size}
    num_classes = model.hparams.num_classes
    path = regularization_path(data["train"], data["val"], num_classes, list(settings.l2_path), **solver)
    chosen = path.points[path.best_index]
    log.info(
        "logistic: l2=%.3g chosen (val/%s=%.4f) among %d values",
        chosen["l2"],
        SELECTION_METRIC,
        chosen[f"val/{SELECTION_METRIC}"],
        len(path.points),
    )
    final = path.best
    if settings.refit:
        both = (torch.cat([data["train"][0], data["val"][0]]), torch.cat([data["train"][1], data["val"][1]]))
        final = fit_multinomial_logistic(*both, num_classes, final.l2, init=final, **solver)
    solve_s = time.perf_counter() - started - extract_s

    load_head(model, final)
    test = score(final, *data["test"], num_classes, "test")
    model.test_predictions = prediction_record(final, *data["test"])
    ckpt = save_checkpoint(model, out_dir / "checkpoints" / "last.ckpt", logistic={"l2": final.l2, "refit": settings.refit})
    write_json_atomic(out_dir / "logistic_path.json", {"chosen_index": path.best_index, "points": path.points})
    log_path(list(context.loggers), path.points)

    metrics: dict[str, Any] = {
        "status": "completed",
        **model.parameter_counts(),
        "time/fit_s": extract_s + solve_s,
        "time/extract_s": extract_s,
        "time/solve_s": solve_s,
        **{k: v for k, v in chosen.items() if k.startswith("val/")},
        f"val/best_{SELECTION_METRIC}": chosen[f"val/{SELECTION_METRIC}"],
        "best_checkpoint": str(ckpt),
        **test,
        "test/checkpoint": str(ckpt),
        "logistic/l2": final.l2,
        "logistic/num_l2": len(path.points),
        "logistic/iterations": sum(int(p["iterations"]) for p in path.points) + (final.iterations if settings.refit else 0),
        "logistic/refit": settings.refit,
    }
    return metrics, features


def load_head(model: TransferClassifier, solution: LinearSolution) -> None:
    """Copy a solution into the classifier's linear head."""
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(solution.weight.to(linear.weight))
        linear.bias.copy_(solution.bias.to(linear.bias))


def prediction_record(solution: LinearSolution, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image probabilities in test-dataset order, as the classifier's test loop records them
    (models/predictions.py): the train task writes predictions.csv and the intervals of
    metrics.json from it, and the W&B predictions table reads it."""
    return {"probs": solution.logits(x).softmax(-1).cpu(), "labels": y.cpu(), "indices": torch.arange(len(y))}


def save_checkpoint(model: TransferClassifier, path: Path, **extra: Any) -> Path:
    """A checkpoint in Lightning's layout (``state_dict`` + ``hyper_parameters``), written
    atomically, that :func:`~tlresearch.models.classifier.load_classifier` reads."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": {k: v for k, v in model.hparams.items()},  # a plain dict: weights_only loading
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": pl.__version__,
        **extra,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def log_path(loggers: list[Any], points: list[dict[str, float]]) -> None:
    """Each value of the path as one logged step (the CSV/W&B curves show the path)."""
    for lg in loggers:
        for step, point in enumerate(points):
            lg.log_metrics({k: v for k, v in point.items() if k in {"l2", "train/objective"} or k.startswith("val/")}, step=step)
        lg.save()  # the CSV file now (the training-curve plot reads it); runs are finished by the caller
