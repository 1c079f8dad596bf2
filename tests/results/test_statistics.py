"""results/statistics.py: bootstrap intervals, paired tests and row marks, each checked against a
known value (a textbook example, scipy's own result or torchmetrics')."""

from __future__ import annotations

import inspect
import math
import time

import numpy as np
import pytest
import scipy.stats
import torch
from torchmetrics.classification import MulticlassAccuracy

from tlresearch.core.errors import ConfigError
from tlresearch.results.predictions import Predictions
from tlresearch.results.statistics import (
    Cell,
    RowMarks,
    accuracy,
    accuracy_ci,
    interval_metrics,
    mark_row,
    mcnemar_test,
    mean_class_accuracy,
    mean_class_accuracy_ci,
    paired_seed_test,
    pool_correctness,
)


def simulated(rng: np.random.Generator, n: int, classes: int, skill: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Labels, and predictions right with probability ``skill`` (per class when an array)."""
    labels = rng.integers(0, classes, size=n)
    right = rng.random(n) < (np.asarray(skill)[labels] if np.ndim(skill) else skill)
    wrong = (labels + rng.integers(1, classes, size=n)) % classes
    return labels, np.where(right, labels, wrong)


# --- point estimates and bootstrap intervals --------------------------------------------------


def test_point_estimates_match_torchmetrics() -> None:
    labels, predictions = simulated(np.random.default_rng(2), 300, 5, np.array([0.9, 0.7, 0.5, 0.3, 0.1]))
    assert accuracy(labels, predictions) == pytest.approx(np.mean(labels == predictions))
    macro = MulticlassAccuracy(5, average="macro")(torch.tensor(predictions), torch.tensor(labels))
    assert mean_class_accuracy(labels, predictions) == pytest.approx(float(macro), abs=1e-6)
    assert mean_class_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5  # (3/3 + 0/1) / 2, not 3/4


def scipy_percentile_interval(correct: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """scipy.stats.bootstrap's percentile interval of the mean. Its traps: the data is a tuple of
    samples, the default method is BCa (nan on degenerate data), the seed keyword changed name
    (random_state -> rng in scipy 1.15), and it cannot stratify."""
    seed_key = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"
    res = scipy.stats.bootstrap((correct.astype(float),), np.mean, n_resamples=resamples, method="percentile",
                                confidence_level=0.95, vectorized=True, batch=500, **{seed_key: np.random.default_rng(seed)})
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def test_accuracy_interval_agrees_with_scipy_bootstrap_and_the_normal_approximation() -> None:
    labels, predictions = simulated(np.random.default_rng(3), 500, 10, 0.7)
    ours = accuracy_ci(labels, predictions, resamples=20_000, seed=0)
    theirs = scipy_percentile_interval(labels == predictions, 20_000, 0)
    # Monte-Carlo error of a 2.5% quantile with 20k resamples here is ~0.0005; one image is 0.002.
    assert ours == pytest.approx(theirs, abs=0.004)

    labels, predictions = simulated(np.random.default_rng(4), 20_000, 10, 0.8)
    p, n = accuracy(labels, predictions), labels.size
    half = scipy.stats.norm.ppf(0.975) * math.sqrt(p * (1 - p) / n)
    for low, high in (accuracy_ci(labels, predictions, resamples=2000), scipy_percentile_interval(labels == predictions, 2000, 1)):
        assert low == pytest.approx(p - half, abs=0.0015) and high == pytest.approx(p + half, abs=0.0015)


def test_intervals_are_seeded_and_deterministic() -> None:
    labels, predictions = simulated(np.random.default_rng(5), 400, 8, 0.6)
    for ci in (accuracy_ci, mean_class_accuracy_ci):
        first = ci(labels, predictions, seed=7)
        assert ci(labels, predictions, seed=7) == first
        assert ci(labels, predictions, seed=8) != first
        assert first[0] < ci(labels, predictions)[1] and first[0] <= first[1]


def explicit_stratified_interval(labels: np.ndarray, predictions: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """The stratified bootstrap written the slow, obvious way: draw image indices within each class."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    correct = labels == predictions
    stats = [np.mean([correct[rng.choice(g, size=g.size)].mean() for g in groups]) for _ in range(resamples)]
    return tuple(np.percentile(stats, [2.5, 97.5]))


def test_stratified_interval_matches_explicit_resampling_within_classes() -> None:
    labels, predictions = simulated(np.random.default_rng(6), 600, 6, np.array([0.95, 0.8, 0.6, 0.5, 0.3, 0.2]))
    labels[:2] = 5  # a class may be small; it keeps its count in every resample
    ours = mean_class_accuracy_ci(labels, predictions, resamples=3000)
    # Monte-Carlo error of the difference of the two bounds: ~0.0013 here.
    assert ours == pytest.approx(explicit_stratified_interval(labels, predictions, 3000, 1), abs=0.006)
    assert ours[0] < mean_class_accuracy(labels, predictions) < ours[1]


def test_stratification_keeps_every_class_in_every_resample() -> None:
    # Classes all right or all wrong: per-class accuracies cannot move while each class keeps its
    # images, so the interval collapses to the estimate (unstratified resampling would lose
    # classes, and move the mean).
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
    predictions = np.where(labels == 1, 0, labels)
    assert mean_class_accuracy_ci(labels, predictions) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert accuracy_ci(labels, labels) == (1.0, 1.0)  # a perfect score has nothing to resample


def test_large_test_sets_stay_fast_and_memory_bounded() -> None:
    labels, predictions = simulated(np.random.default_rng(7), 100_000, 1000, 0.75)
    start = time.perf_counter()
    metrics = interval_metrics(labels, predictions, resamples=1000, seed=0)
    assert time.perf_counter() - start < 10
    assert list(metrics) == ["test/acc_ci_low", "test/acc_ci_high", "test/mean_class_acc_ci_low", "test/mean_class_acc_ci_high"]
    assert metrics["test/acc_ci_low"] < accuracy(labels, predictions) < metrics["test/acc_ci_high"]
    assert metrics["test/mean_class_acc_ci_low"] < mean_class_accuracy(labels, predictions) < metrics["test/mean_class_acc_ci_high"]
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize(
    ("labels", "predictions", "kwargs", "message"),
    [
        ([], [], {}, "one label per test image"),
        ([0, 1], [0], {}, "Mismatched lengths"),
        ([0, 1], [0, 1], {"resamples": 999}, "resamples=999 is invalid"),
        ([0, 1], [0, 1], {"seed": -1}, "seed=-1 is invalid"),
    ],
)
def test_intervals_refuse_bad_input(labels, predictions, kwargs, message) -> None:
    for ci in (accuracy_ci, mean_class_accuracy_ci):
        with pytest.raises(ConfigError, match=message):
            ci(labels, predictions, **kwargs)


# --- comparing two columns ------------------------------------------------------------------


def test_paired_seed_test_matches_scipy_on_a_hand_made_example() -> None:
    a = {0: 0.81, 1: 0.79, 2: 0.84, 3: 0.80}
    b = {0: 0.78, 1: 0.78, 2: 0.80, 3: 0.79, 9: 0.5}  # seed 9 has no pair
    result = paired_seed_test(a, b)
    expected = scipy.stats.ttest_rel([0.81, 0.79, 0.84, 0.80], [0.78, 0.78, 0.80, 0.79])
    d = np.array([0.03, 0.01, 0.04, 0.01])
    assert result.n == 4 and result.mean_difference == pytest.approx(d.mean())
    assert result.t == pytest.approx(expected.statistic) == pytest.approx(d.mean() / (d.std(ddof=1) / 2))
    assert result.p == pytest.approx(expected.pvalue)
    assert "[9]" in result.note


def test_paired_seed_test_without_a_p_value_says_why() -> None:
    one = paired_seed_test({0: 0.8}, {0: 0.7})
    assert (one.n, one.t, one.p) == (1, None, None) and one.mean_difference == pytest.approx(0.1) and "at least 2" in one.note
    none = paired_seed_test({0: 0.8}, {1: 0.7})
    assert (none.n, none.mean_difference, none.p) == (0, None, None) and "[0, 1]" in none.note
    for shift in (0.0, 0.05):
        flat = paired_seed_test({0: 0.8, 1: 0.9}, {0: 0.8 - shift, 1: 0.9 - shift})
        assert flat.p is None and flat.t is None and "same difference" in flat.note
    with pytest.raises(ConfigError, match="finite"):
        paired_seed_test({0: float("nan"), 1: 0.5}, {0: 0.1, 1: 0.2})


def correctness(b: int, c: int, both_right: int = 0, both_wrong: int = 0) -> tuple[dict, dict]:
    pattern = [(True, False)] * b + [(False, True)] * c + [(True, True)] * both_right + [(False, False)] * both_wrong
    return ({(0, f"img{i}"): x for i, (x, _) in enumerate(pattern)}, {(0, f"img{i}"): y for i, (_, y) in enumerate(pattern)})


def test_mcnemar_matches_textbook_examples() -> None:
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), ch. 8:
    # Cavo et al. (2012), table [[59, 6], [16, 80]], McNemar exact conditional test P = 0.052479
    # (also the R package contingencytables' own test of it).
    result = mcnemar_test(*correctness(6, 16, both_right=59, both_wrong=80))
    assert (result.b, result.c, result.n) == (6, 16, 161)
    assert result.p == pytest.approx(0.052479, abs=5e-7)
    # Bentur et al. (2009), same chapter: b = 1, c = 7, P = 2 * (1 + 8) / 2**8.
    assert mcnemar_test(*correctness(1, 7, 1, 12)).p == pytest.approx(18 / 256)
    assert mcnemar_test(*correctness(0, 0, 3, 2)).p == 1.0  # no discordant pair: no evidence


def test_mcnemar_pairs_by_seed_and_path_and_refuses_different_images() -> None:
    def run(correct: list[bool], paths=("a.jpg", "b.jpg", "c.jpg")) -> Predictions:
        return Predictions(tuple(paths), np.zeros(len(paths), int), np.where(correct, 0, 1), ("x", "y"))

    a = pool_correctness({0: run([True, True, False]), 1: run([True, False, False])})
    b = pool_correctness({0: run([False, True, True]), 1: run([False, False, False])})
    assert a[1, "a.jpg"] and not b[1, "a.jpg"]
    result = mcnemar_test(a, b)
    assert (result.b, result.c, result.n) == (2, 1, 6)
    with pytest.raises(ConfigError, match=r"seeds only in A: \[1\], only in B: \[\]"):
        mcnemar_test(a, pool_correctness({0: run([True] * 3)}))
    other = pool_correctness({0: run([True] * 3), 1: run([True] * 3, ("a.jpg", "b.jpg", "d.jpg"))})
    with pytest.raises(ConfigError, match=r"1 images only in A \(e.g. \[\(1, 'c.jpg'\)\]\), 1 only in B"):
        mcnemar_test(a, other)
    with pytest.raises(ConfigError, match="twice"):
        pool_correctness({0: run([True, True], ("a.jpg", "a.jpg"))})
    with pytest.raises(ConfigError, match="neither"):
        mcnemar_test({}, {})


# --- marking a row --------------------------------------------------------------------------


def test_mark_row_finds_the_best_cell_and_those_not_significantly_worse() -> None:
    best = Cell({0: 0.80, 1: 0.82, 2: 0.81})
    close = Cell({0: 0.79, 1: 0.82, 2: 0.80})  # within seed noise of the best
    far = Cell({0: 0.60, 1: 0.61, 2: 0.63})  # clearly worse
    single = Cell({0: 0.805})  # one seed: no test, no claim
    marks = mark_row([far, best, None, close, single, Cell({})])
    assert marks.best == 1 and marks.same_as_best == (3,)
    assert marks.p_values[1] is None and marks.p_values[2] is None and marks.p_values[4] is None
    assert marks.p_values[0] == pytest.approx(scipy.stats.ttest_rel([0.60, 0.61, 0.63], [0.80, 0.82, 0.81]).pvalue)
    assert marks.p_values[0] < 0.05 <= marks.p_values[3]
    assert mark_row([far, best], higher_is_better=False).best == 0
    assert mark_row([close, Cell(dict(close.values))]).best == 0  # ties: the first
    assert mark_row([None, Cell({})]) == RowMarks(None, (), (None, None))


def test_mark_row_by_images_uses_mcnemar() -> None:
    right_a, right_b = correctness(6, 16, 59, 80)
    a, b = Cell({0: 0.40}, right_a), Cell({0: 0.46}, right_b)
    marks = mark_row([a, b, Cell({0: 0.1})], test="images")
    assert marks.best == 1 and marks.same_as_best == (0,) and marks.p_values[0] == pytest.approx(0.052479, abs=5e-7)
    assert marks.p_values[2] is None  # no per-image predictions
    assert mark_row([a, b], test="images", alpha=0.06).same_as_best == ()
    with pytest.raises(ConfigError, match="test='pixels' is invalid"):
        mark_row([a, b], test="pixels")


def test_mark_row_refuses_values_that_are_not_numbers() -> None:
    with pytest.raises(ConfigError, match=r"cells\[1\].values=\{0: nan\} is invalid"):
        mark_row([Cell({0: 0.5}), Cell({0: float("nan")})])
