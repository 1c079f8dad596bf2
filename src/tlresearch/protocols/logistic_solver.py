"""L2-regularised multinomial logistic regression by full-batch L-BFGS, and its regularisation path.

The solver of the linear-evaluation protocol (``protocols/logistic.py``; Kornblith et al.
2019). The objective is

    mean cross-entropy(x W^T + b, y) + l2 / 2 * ||W||^2      (the bias is not penalised)

(scikit-learn's ``C`` is ``1 / (l2 * n_samples)``). Each value is solved on the device that
holds the features, warm-started from the solution of the next stronger value: the path runs
from the strongest regularisation (the zero solution is near) to the weakest. Selection uses
the validation split's mean per-class accuracy (the metric of the other runs' model
selection); ties go to the stronger regularisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tlresearch.models.classifier import classification_metrics

#: The metric that selects the regularisation strength (as ModelCheckpoint's monitor elsewhere).
SELECTION_METRIC = "mean_class_acc"


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
