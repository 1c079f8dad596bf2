"""How sure a table's numbers are: bootstrap intervals, paired tests, the marks of a row.

Pure functions of labels, predictions and per-seed values (reading and writing
``predictions.csv`` is :mod:`tlresearch.results.predictions`):

* 95% percentile-bootstrap intervals over test images (:func:`accuracy_ci`, stratified
  :func:`mean_class_accuracy_ci`, both in :func:`interval_metrics` as ``metrics.json`` keys);
* comparing two table columns: a paired t-test across seeds (:func:`paired_seed_test`) and
  McNemar's exact test on pooled per-image correctness (:func:`mcnemar_test`); the LaTeX marks
  of a row (:func:`mark_row`: its best cell, and the cells not significantly worse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tlresearch.core.config import check_int, check_seed, require
from tlresearch.core.errors import ConfigError
from tlresearch.results.predictions import Predictions

#: Resamples drawn per block: bounds the memory of a bootstrap to BLOCK x classes draws, and is
#: fixed (not sized by free memory) so that a seed gives the same interval on every machine.
BLOCK = 256

Correctness = Mapping[tuple[int, str], bool]
"""Pooled per-image correctness of one table cell: (seed, image path) -> top-1 correct."""


# --- Point estimates and percentile-bootstrap intervals over test images ---------------------


def accuracy(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float:
    """Top-1 accuracy: the fraction of images with ``prediction == label``."""
    return float(np.mean(_correct(labels, predictions)))


def mean_class_accuracy(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of each class's accuracy (its recall).

    A class with no test image is left out (torchmetrics' macro accuracy instead counts a class
    that is predicted but absent from the labels as 0; the two agree when every class has test
    images)."""
    counts, hits = _class_counts(labels, predictions)
    return float(np.mean(hits / counts))


def accuracy_ci(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray, *, resamples: int = 1000,
                seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval (low, high) of top-1 accuracy; the resampling unit is the
    test image (N images drawn with replacement, ``resamples`` times).

    The accuracy of a resample of N images of which a fraction p-hat is correct is exactly
    Binomial(N, p-hat) / N, so each resample is one binomial draw (the same distribution as
    drawing indices, in O(resamples) memory). The bounds are the (1 - level)/2 and
    (1 + level)/2 percentiles (numpy's linear interpolation) of the resampled accuracies. The
    draws come from ``numpy.random.default_rng(seed)``: the same inputs and seed give the same
    interval. An accuracy of 0 or 1 gives the degenerate interval (p-hat, p-hat)."""
    correct = _correct(labels, predictions)
    return _percentile_interval(np.array([correct.size]), np.array([correct.sum()]), resamples, seed, level)


def mean_class_accuracy_ci(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray, *,
                           resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Stratified percentile-bootstrap interval (low, high) of :func:`mean_class_accuracy`.

    Each resample draws, within every class c, its n_c test images with replacement, so every
    class keeps its count (scipy.stats.bootstrap cannot stratify). A class's resampled accuracy
    is exactly Binomial(n_c, k_c / n_c) / n_c (k_c: its correct images), independent across
    classes; a resample's statistic is the mean over classes. Percentiles and seed as in
    :func:`accuracy_ci`."""
    counts, hits = _class_counts(labels, predictions)
    return _percentile_interval(counts, hits, resamples, seed, level)


def interval_metrics(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray, *,
                     resamples: int = 1000, seed: int = 0, split: str = "test") -> dict[str, float]:
    """The 95% intervals of ``metrics.json``: ``{split}/acc_ci_low``, ``{split}/acc_ci_high``,
    ``{split}/mean_class_acc_ci_low`` and ``{split}/mean_class_acc_ci_high``."""
    acc = accuracy_ci(labels, predictions, resamples=resamples, seed=seed)
    per_class = mean_class_accuracy_ci(labels, predictions, resamples=resamples, seed=seed)
    return {f"{split}/acc_ci_low": acc[0], f"{split}/acc_ci_high": acc[1],
            f"{split}/mean_class_acc_ci_low": per_class[0], f"{split}/mean_class_acc_ci_high": per_class[1]}


def _percentile_interval(counts: np.ndarray, hits: np.ndarray, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Resample each stratum's accuracy binomially and take percentiles of the mean over strata."""
    check_int("resamples", resamples, minimum=1000, fix="use at least 1000: fewer make a 95% interval Monte-Carlo noise.")
    check_seed(seed)
    require(isinstance(level, float) and 0 < level < 1, "level", level, "use a fraction such as 0.95.")
    rng = np.random.default_rng(seed)
    rates = hits / counts
    resampled = np.concatenate([(rng.binomial(counts, rates, size=(min(BLOCK, resamples - start), counts.size)) / counts).mean(axis=1)
                                for start in range(0, resamples, BLOCK)])
    low, high = np.percentile(resampled, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _correct(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> np.ndarray:
    labels_arr, predictions_arr = np.asarray(labels), np.asarray(predictions)
    require(labels_arr.ndim == 1 and labels_arr.size > 0, "labels", f"{labels_arr.shape} array", "give one label per test image.")
    _same_length(labels=labels_arr.size, predictions=predictions_arr.size)
    return labels_arr == predictions_arr.reshape(labels_arr.shape)


def _class_counts(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class present in ``labels``: its number of test images and of correct ones."""
    correct = _correct(labels, predictions)
    classes, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    return counts, np.bincount(inverse, weights=correct, minlength=classes.size)


def _check_values(key: str, values: Mapping[int, float]) -> None:
    bad = {seed: v for seed, v in values.items()
           if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v)}
    require(not bad, key, bad, "give one finite number per seed.")


def _same_length(**lengths: int) -> None:
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"Mismatched lengths {lengths}: give one entry per test image in each.")


# --- Comparing two table columns ------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of A - B over the seeds both sides ran; ``t``/``p`` are None when undefined
    (``note`` says why; it also names seeds left out for having no pair)."""

    mean_difference: float | None
    t: float | None
    p: float | None
    n: int
    note: str = ""


def paired_seed_test(a: Mapping[int, float], b: Mapping[int, float]) -> PairedTest:
    """``scipy.stats.ttest_rel`` (two-sided) on the values of the seeds in both ``a`` and ``b``
    (seed -> metric), paired by seed: t = mean(d) / (std(d, ddof=1) / sqrt(n)), d = a - b.

    No p-value with fewer than two pairs, nor when every difference is the same (the t statistic
    divides by their zero spread: scipy would say nan, or p = 0 for any constant shift)."""
    _check_values("column A", a)
    _check_values("column B", b)
    seeds = sorted(set(a) & set(b))
    unpaired = sorted(set(a) ^ set(b))
    note = f"seeds {unpaired} have no pair and are left out. " if unpaired else ""
    d = np.array([float(a[s]) - float(b[s]) for s in seeds])
    if d.size < 2:
        return PairedTest(float(d.mean()) if d.size else None, None, None, int(d.size),
                          note + f"a paired test needs at least 2 seeds run by both columns, got {d.size}.")
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal up to rounding: no spread to divide by
        return PairedTest(float(d.mean()), None, None, int(d.size), note + "every seed gives the same difference: the t-test is undefined.")
    result = stats.ttest_rel([float(a[s]) for s in seeds], [float(b[s]) for s in seeds])
    return PairedTest(float(d.mean()), float(result.statistic), float(result.pvalue), int(d.size), note.strip())


@dataclass(frozen=True)
class McNemarTest:
    """``b``: images A got right and B wrong; ``c``: A wrong, B right; ``n``: pooled images."""

    b: int
    c: int
    p: float
    n: int


def pool_correctness(runs: Mapping[int, Predictions]) -> dict[tuple[int, str], bool]:
    """Pool the per-image correctness of one cell's runs (seed -> its predictions) into
    (seed, path) -> correct; a path listed twice in one run is an error."""
    pooled: dict[tuple[int, str], bool] = {}
    for seed, run in runs.items():
        for path, ok in zip(run.paths, run.correct.tolist()):
            if (seed, path) in pooled:
                raise ConfigError(f"Seed {seed} lists the image {path!r} twice: its predictions.csv is not one test set.")
            pooled[seed, path] = bool(ok)
    return pooled


def mcnemar_test(a: Correctness, b: Correctness) -> McNemarTest:
    """McNemar's exact test on pooled per-image predictions of two methods, paired by (seed, image
    path): the two-sided ``scipy.stats.binomtest(b, b + c, 0.5)`` p-value (2 x the smaller
    binomial tail, at most 1; 1 when b + c = 0). Pooling seeds treats the runs' images as
    independent pairs. Both sides must cover exactly the same (seed, path) pairs."""
    if not a or set(a) != set(b):
        raise ConfigError(f"McNemar's test needs both columns on the same test images: {_difference(a, b)}")
    keys = list(a)
    right_a = np.array([a[k] for k in keys], dtype=bool)
    right_b = np.array([b[k] for k in keys], dtype=bool)
    b_count, c_count = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = float(stats.binomtest(b_count, b_count + c_count, 0.5).pvalue) if b_count + c_count else 1.0
    return McNemarTest(b_count, c_count, p, len(keys))


def _difference(a: Correctness, b: Correctness) -> str:
    """Name what differs between two sides' (seed, path) pairs."""
    if not a and not b:
        return "neither has per-image predictions."
    seeds_a, seeds_b = {s for s, _ in a}, {s for s, _ in b}
    if seeds_a != seeds_b:
        return f"seeds only in A: {sorted(seeds_a - seeds_b)}, only in B: {sorted(seeds_b - seeds_a)}."
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return f"{len(only_a)} images only in A (e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]}), as (seed, path)."


@dataclass(frozen=True)
class Cell:
    """One table cell: its metric per seed, and its pooled per-image correctness if known."""

    values: Mapping[int, float]
    correct: Correctness | None = None


@dataclass(frozen=True)
class RowMarks:
    """``best``: index of the best cell (None: no cell has values); ``same_as_best``: the other
    cells whose test against it gives p >= alpha; ``p_values``: each cell's p against the best
    (None for the best, an empty cell, or a test without a p-value)."""

    best: int | None
    same_as_best: tuple[int, ...]
    p_values: tuple[float | None, ...]


def mark_row(cells: Sequence[Cell | None], *, alpha: float = 0.05, test: str = "seeds", higher_is_better: bool = True) -> RowMarks:
    """The best cell of a row (highest mean over seeds, or lowest when not ``higher_is_better``;
    ties: the first) and the cells not significantly different from it: a test of the cell
    against the best gives p >= ``alpha``. ``test="seeds"``: :func:`paired_seed_test`;
    ``test="images"``: :func:`mcnemar_test` on the cells' ``correct``. A cell whose test has no
    p-value (too few seeds, no per-image predictions) is not marked: nothing is claimed for it.
    Cells whose images differ make :func:`mcnemar_test` raise its ConfigError."""
    require(test in ("seeds", "images"), "test", test, "use 'seeds' (paired t-test) or 'images' (McNemar).")
    require(isinstance(alpha, float) and 0 < alpha < 1, "alpha", alpha, "use a significance level such as 0.05.")
    for i, cell in enumerate(cells):
        _check_values(f"cells[{i}].values", cell.values if cell is not None else {})
    means = [float(np.mean(list(c.values.values()))) if c is not None and c.values else None for c in cells]
    sign = 1.0 if higher_is_better else -1.0
    ranked = [(sign * m, -i) for i, m in enumerate(means) if m is not None]
    if not ranked:
        return RowMarks(None, (), tuple(None for _ in cells))
    best = -max(ranked)[1]
    top = cells[best]
    assert top is not None
    p_values: list[float | None] = []
    for i, cell in enumerate(cells):
        if i == best or cell is None or means[i] is None:
            p_values.append(None)
        elif test == "seeds":
            p_values.append(paired_seed_test(cell.values, top.values).p)
        elif cell.correct is None or top.correct is None:
            p_values.append(None)
        else:
            p_values.append(mcnemar_test(cell.correct, top.correct).p)
    return RowMarks(best, tuple(i for i, p in enumerate(p_values) if p is not None and p >= alpha), tuple(p_values))
