"""The literature's linear-evaluation protocol: L-BFGS logistic regression on frozen features.

Kornblith, Shlens & Le (2019), "Do Better ImageNet Models Transfer Better?", as used by SimCLR
and BYOL: features of the frozen backbone (evaluation transform, no augmentation), an
L2-regularised multinomial logistic regression solved with L-BFGS, the regularisation strength
chosen among 45 log-spaced values in [1e-6, 1e5] by validation accuracy, then refit on
train + val and evaluated once on test.

``finetune=logistic`` runs it instead of gradient-descent epochs. The objective is

    mean cross-entropy(x W^T + b, y) + l2 / 2 * ||W||^2      (the bias is not penalised)

(scikit-learn's ``C`` is ``1 / (l2 * n_samples)``). Each value is solved on the device that
holds the features, warm-started from the solution of the next stronger value: the path runs
from the strongest regularisation (the zero solution is near) to the weakest. Selection uses
the validation split's mean per-class accuracy (the metric of the other runs' model
selection); ties go to the stronger regularisation.

The run directory gets what other runs write (``metrics.json`` with ``test/*``,
``val/best_mean_class_acc``, ``params/*``, ``time/*``; ``checkpoints/last.ckpt`` that
:func:`tlresearch.models.classifier.load_classifier` reads) plus ``logistic/l2`` and
``logistic_path.json`` (every value's validation scores).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchmetrics.classification import MulticlassConfusionMatrix

from tlresearch.core.errors import ConfigError
from tlresearch.finetune.base import check_positive
from tlresearch.finetune.cache import cached_datamodule
from tlresearch.finetune.linear_probe import LinearProbe
from tlresearch.models.classifier import TransferClassifier, classification_metrics
from tlresearch.models.performance import device_of_trainer_config
from tlresearch.core.files import atomic_write, write_json_atomic

log = logging.getLogger(__name__)

#: The metric that selects the regularisation strength (as ModelCheckpoint's monitor elsewhere).
SELECTION_METRIC = "mean_class_acc"


class LogisticProbe(LinearProbe):
    """The freeze schedule of ``finetune=logistic`` (a linear probe) and the protocol's settings.

    Args:
        l2_min, l2_max, num_l2: the grid of regularisation strengths (log-spaced, inclusive).
        max_iter: L-BFGS iterations per value at most.
        tolerance: stop when every gradient entry is below this (L-BFGS ``tolerance_grad``).
        history_size: L-BFGS curvature pairs kept.
        refit: refit on train + val with the chosen value before testing (the protocol);
            ``False`` tests the train-only solution.
        cache_features, decode_on_device: as for :class:`LinearProbe` (``cache_features=False``
            extracts into memory only).
    """

    name = "logistic"

    def __init__(
        self,
        l2_min: float = 1e-6,
        l2_max: float = 1e5,
        num_l2: int = 45,
        max_iter: int = 1000,
        tolerance: float = 1e-6,
        history_size: int = 20,
        refit: bool = True,
        cache_features: bool = True,
        decode_on_device: bool = False,
    ) -> None:
        super().__init__(cache_features=cache_features, cache_views=0, decode_on_device=decode_on_device)
        for key, value in {"l2_min": l2_min, "l2_max": l2_max, "tolerance": tolerance}.items():
            check_positive(key, float(value))
        if l2_min > l2_max:
            raise ConfigError(f"finetune.l2_min={l2_min} > finetune.l2_max={l2_max}: the grid needs l2_min <= l2_max.")
        for key, value in {"num_l2": num_l2, "max_iter": max_iter, "history_size": history_size}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"finetune.{key}={value!r} is invalid: use a positive integer.")
        if not isinstance(refit, bool):
            raise ConfigError(f"finetune.refit={refit!r} is invalid: use true or false.")
        self.l2_min, self.l2_max, self.num_l2 = float(l2_min), float(l2_max), num_l2
        self.max_iter, self.tolerance, self.history_size, self.refit = max_iter, float(tolerance), history_size, refit

    def l2_path(self) -> list[float]:
        """The grid, strongest regularisation first (the order it is solved in)."""
        return l2_grid(self.l2_min, self.l2_max, self.num_l2)[::-1]


def l2_grid(low: float, high: float, num: int) -> list[float]:
    """``num`` log-spaced values from ``low`` to ``high`` inclusive, ascending."""
    if num == 1:
        return [float(low)]
    step = (math.log10(high) - math.log10(low)) / (num - 1)
    return [float(10 ** (math.log10(low) + i * step)) for i in range(num)]


# --------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------


@dataclass
class LinearSolution:
    """A fitted linear classifier ``logits = x @ weight.T + bias`` and how it was found."""

    weight: torch.Tensor  # [C, F]
    bias: torch.Tensor  # [C]
    l2: float
    iterations: int = 0
    loss: float = math.nan

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight.t())


def fit_multinomial_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    *,
    init: LinearSolution | None = None,
    max_iter: int = 1000,
    tolerance: float = 1e-6,
    history_size: int = 20,
) -> LinearSolution:
    """Minimise ``mean CE + l2/2 ||W||^2`` with full-batch L-BFGS (strong-Wolfe line search)
    on ``x``'s device, starting from ``init`` (warm start) or zeros."""
    shape = (num_classes, x.shape[1])
    weight = (init.weight.detach().clone() if init is not None else x.new_zeros(shape)).requires_grad_(True)
    bias = (init.bias.detach().clone() if init is not None else x.new_zeros(num_classes)).requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, max_eval=max_iter * 5 // 4, tolerance_grad=tolerance,
        tolerance_change=1e-10, history_size=history_size, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = F.cross_entropy(torch.addmm(bias, x, weight.t()), y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        loss = optimizer.step(closure)
    iterations = int(optimizer.state[optimizer.param_groups[0]["params"][0]].get("n_iter", 0))
    return LinearSolution(weight.detach(), bias.detach(), l2, iterations, float(loss.detach()))


def score(solution: LinearSolution, x: torch.Tensor, y: torch.Tensor, num_classes: int, prefix: str) -> dict[str, float]:
    """``{prefix}/acc``, ``/mean_class_acc``, ``/top5`` (over 5 classes) and ``/loss``, as the
    Lightning runs compute them."""
    logits = solution.logits(x)
    metrics = classification_metrics(num_classes, prefix).to(x.device)
    out = {k: float(v) for k, v in metrics(logits, y).items()}
    out[f"{prefix}/loss"] = float(F.cross_entropy(logits, y))
    return out


@dataclass
class PathResult:
    """The regularisation path: each value's validation scores, and the chosen solution."""

    points: list[dict[str, float]]
    best: LinearSolution
    best_index: int


def regularization_path(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    l2_values: list[float],
    **solver: Any,
) -> PathResult:
    """Fit every value of ``l2_values`` in order (each warm-started from the previous one),
    score it on ``val``, and keep the best by validation mean per-class accuracy (the first
    best: with a strongest-first path, ties go to the stronger regularisation)."""
    points: list[dict[str, float]] = []
    previous: LinearSolution | None = None
    best: LinearSolution | None = None
    best_index, best_score = -1, -math.inf
    for index, l2 in enumerate(l2_values):
        previous = fit_multinomial_logistic(*train, num_classes, l2, init=previous, **solver)
        scores = score(previous, *val, num_classes, "val")
        points.append({"l2": l2, "iterations": previous.iterations, "train/objective": previous.loss, **scores})
        if scores[f"val/{SELECTION_METRIC}"] > best_score:
            best, best_index, best_score = previous, index, scores[f"val/{SELECTION_METRIC}"]
    assert best is not None
    return PathResult(points, best, best_index)


# --------------------------------------------------------------------------------------------
# The protocol as a training run
# --------------------------------------------------------------------------------------------


def fit_logistic_protocol(
    cfg: DictConfig, model: TransferClassifier, datamodule: Any, loggers: list[Any] | None = None
) -> tuple[dict[str, Any], Any]:
    """Run the protocol for a training config: features, path, selection, refit, test.

    Fills ``model``'s head with the final solution, writes ``checkpoints/last.ckpt`` and
    ``logistic_path.json`` into ``paths.output_dir``; returns ``(metrics, feature DataModule)``
    (the caller writes ``metrics.json`` and the other run records).
    """
    schedule: LogisticProbe = model.schedule  # type: ignore[assignment]
    out_dir = Path(cfg.paths.output_dir)
    device = device_of_trainer_config(cfg.trainer)
    started = time.perf_counter()
    if len(datamodule.dataset("val")) == 0:
        raise ConfigError(
            "finetune=logistic chooses its regularisation on the validation split, but the data has no validation "
            "images; give the dataset a val split (e.g. data.val_per_class=20 for pets, data.val_fraction=0.1 for folders)."
        )
    features = cached_datamodule(cfg, model, datamodule, views=0, persist=schedule.cache_features, device=device)
    sets = {split: features.features(split).to(device) for split in ("train", "val", "test")}
    data = {split: (s.features[0].float(), s.labels) for split, s in sets.items()}
    extract_s = time.perf_counter() - started

    solver = {"max_iter": schedule.max_iter, "tolerance": schedule.tolerance, "history_size": schedule.history_size}
    num_classes = model.hparams.num_classes
    path = regularization_path(data["train"], data["val"], num_classes, schedule.l2_path(), **solver)
    chosen = path.points[path.best_index]
    log.info("logistic: l2=%.3g chosen (val/%s=%.4f) among %d values", chosen["l2"], SELECTION_METRIC, chosen[f"val/{SELECTION_METRIC}"], len(path.points))
    final = path.best
    if schedule.refit:
        both = (torch.cat([data["train"][0], data["val"][0]]), torch.cat([data["train"][1], data["val"][1]]))
        final = fit_multinomial_logistic(*both, num_classes, final.l2, init=final, **solver)
    solve_s = time.perf_counter() - started - extract_s

    load_head(model, final)
    test = score(final, *data["test"], num_classes, "test")
    model.test_confusion_matrix = confusion_matrix(final, *data["test"], num_classes)
    model.test_predictions = prediction_record(final, *data["test"])
    ckpt = save_checkpoint(model, out_dir / "checkpoints" / "last.ckpt", logistic={"l2": final.l2, "refit": schedule.refit})
    write_json_atomic(out_dir / "logistic_path.json", {"chosen_index": path.best_index, "points": path.points})
    log_path(loggers or [], path.points)

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
        "logistic/iterations": sum(int(p["iterations"]) for p in path.points) + (final.iterations if schedule.refit else 0),
        "logistic/refit": schedule.refit,
    }
    return metrics, features


def load_head(model: TransferClassifier, solution: LinearSolution) -> None:
    """Copy a solution into the classifier's linear head."""
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(solution.weight.to(linear.weight))
        linear.bias.copy_(solution.bias.to(linear.bias))


def confusion_matrix(solution: LinearSolution, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    matrix = MulticlassConfusionMatrix(num_classes).to(x.device)
    return matrix(solution.logits(x), y).cpu()


def prediction_record(solution: LinearSolution, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image probabilities in test-loader order, as the classifier's test loop records them
    (the W&B predictions table reads them)."""
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
