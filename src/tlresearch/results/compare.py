"""How sure a result table is: each cell's 95% interval, the marks of its best cells, and the
comparison of two of its columns.

Built on a :class:`~tlresearch.results.aggregate.Table` and the statistics of
:mod:`tlresearch.results.statistics`; :mod:`tlresearch.results.formats` and
:mod:`tlresearch.results.compare_formats` write them out. The choices (stated in every caption):

* **Interval of a cell** (``--ci``): with n >= 2 runs, Student's t-interval of the mean over
  the seeds, mean ± t(0.975, n-1) · s / sqrt(n) (``scipy.stats.t``): the spread of training
  seeds, on a fixed test set; with n = 1, that run's percentile bootstrap over its test images
  (``<metric>_ci_low|high`` in metrics.json, written for ``test/acc`` and
  ``test/mean_class_acc``); no interval otherwise, and the cell says so.
* **Marks**: the best cell of each row (of the column, in a one-column table) is bold; a cell
  whose two-sided paired t-test across seeds against it gives p >= 0.05 is marked as not
  significantly different (:func:`~tlresearch.results.statistics.mark_row`). A cell with fewer
  than two seeds in common with the best gets no mark: nothing is claimed for it.
* **Comparing columns A and B**, per row: the difference of the cell means (B - A, in the
  table's units), the paired t-test across seeds (paired by ``seed``), and McNemar's exact test
  on top-1 correctness per test image, pooled over the seeds both ran, from each run's
  ``predictions.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from scipy import stats

from tlresearch.core.errors import ConfigError, suggest
from tlresearch.results.aggregate import Cell, Table, metric_value
from tlresearch.results.grouping import Label, format_label, label_text
from tlresearch.results.predictions import read_predictions
from tlresearch.results.records import Run
from tlresearch.results.run_predictions import PREDICTIONS_FILE
from tlresearch.results.statistics import Cell as SeedCell
from tlresearch.results.statistics import McNemarTest, PairedTest, mark_row, mcnemar_test, paired_seed_test, pool_correctness

LEVEL = 0.95
ALPHA = 0.05


# ----------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A cell's 95% interval in the table's units: ``method`` ``"t"`` (over seeds) or
    ``"bootstrap"`` (one run, over test images); ``low``/``high`` None with ``note`` saying why."""

    low: float | None
    high: float | None
    method: str = ""
    note: str = ""


def cell_interval(table: Table, cell: Cell) -> Interval:
    """The 95% interval shown by ``--ci`` (see the module docstring)."""
    if cell.n >= 2:
        mean, std = cell.mean, cell.std
        assert mean is not None and std is not None
        half = stats.t.ppf(0.5 + LEVEL / 2, cell.n - 1) * std / math.sqrt(cell.n)
        return Interval(mean - half, mean + half, "t")
    if cell.n == 0:
        return Interval(None, None, note="no value")
    run = next(r for r in cell.runs if metric_value(r, table.metric) is not None)
    low, high = (metric_value(run, f"{table.metric}_{side}") for side in ("ci_low", "ci_high"))
    if low is None or high is None:
        return Interval(None, None, note=f"no interval: one run, and its metrics.json has no {table.metric}_ci_low")
    scale = 100.0 if table.percent else 1.0
    return Interval(low * scale, high * scale, "bootstrap")


# ----------------------------------------------------------------------------- seeds


def run_seed(run: Run) -> int | None:
    """The run's ``seed`` (config), None when it has none or not an integer."""
    seed = run.config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def seed_values(table: Table, cell: Cell) -> tuple[dict[int, float], str]:
    """``(seed -> value in the table's units, problem)`` of the cell's runs with a value; the
    problem names runs that cannot be paired (no seed, or a seed shared by two runs of the cell:
    both are left out)."""
    scale = 100.0 if table.percent else 1.0
    by_seed: dict[int, list[Run]] = {}
    unseeded = []
    for run in cell.runs:
        value = metric_value(run, table.metric)
        if value is None or not math.isfinite(value):
            continue  # no value (counted by the cell), or nan/inf: nothing to test
        seed = run_seed(run)
        if seed is None:
            unseeded.append(run)
        else:
            by_seed.setdefault(seed, []).append(run)
    values = {seed: metric_value(runs[0], table.metric) * scale for seed, runs in by_seed.items() if len(runs) == 1}
    problems = [f"{len(unseeded)} run(s) without an integer seed left out"] if unseeded else []
    shared = sorted(seed for seed, runs in by_seed.items() if len(runs) > 1)
    if shared:
        problems.append(f"seed(s) {shared} run twice in one cell left out (e.g. {', '.join(str(r.path) for r in by_seed[shared[0]])})")
    return values, "; ".join(problems)


# ----------------------------------------------------------------------------- marks


@dataclass
class Marks:
    """The best cells (bold) and those not significantly different from the best (``same``), as
    (row, col) keys; ``along`` is ``"row"`` (the best of each row) or ``"column"``."""

    along: str
    best: set[tuple[Label, Label]] = field(default_factory=set)
    same: set[tuple[Label, Label]] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def table_marks(table: Table, alpha: float = ALPHA) -> Marks:
    """The marks of every row (columns compete), or of the single column (rows compete).

    Bold: the best mean of the line and the cells tied with it at the displayed precision
    (nothing is bold in a line with fewer than two values). Not significantly different:
    :func:`~tlresearch.results.statistics.mark_row` with the paired t-test across seeds."""
    along = "row" if len(table.cols) >= 2 else "column"
    lines = ([[(row, col) for col in table.cols] for row in table.rows] if along == "row"
             else [[(row, col) for row in table.rows] for col in table.cols])
    marks = Marks(along)
    for keys in lines:
        cells = [table.cells[k] for k in keys]
        means = {k: round(c.mean, table.decimals) for k, c in zip(keys, cells) if c.mean is not None and math.isfinite(c.mean)}
        if len(means) < 2:
            continue
        top = max(means.values()) if table.higher_is_better else min(means.values())
        bold = {k for k, m in means.items() if m == top}
        marks.best |= bold
        seeded = []
        for key, cell in zip(keys, cells):
            values, problem = seed_values(table, cell)
            if problem:
                where = label_text(table.row_keys + table.col_keys, key[0] + key[1]) or "all runs"
                marks.warnings.append(f"{where}: {problem}.")
            seeded.append(SeedCell(values) if values else None)
        row_marks = mark_row(seeded, alpha=alpha, higher_is_better=table.higher_is_better)
        if row_marks.best is not None and keys[row_marks.best] in bold:  # else runs left out moved the best: no claim
            marks.same |= {keys[i] for i in row_marks.same_as_best} - bold
    return marks


# ----------------------------------------------------------------------------- two columns


@dataclass(frozen=True)
class RowComparison:
    """One row of ``--compare``: the two cells, B - A of their means, the paired t-test across
    seeds (B vs A), McNemar's test on pooled per-image correctness, and notes."""

    row: Label
    a: Cell
    b: Cell
    difference: float | None
    paired: PairedTest
    mcnemar: McNemarTest | None
    notes: tuple[str, ...] = ()


def find_column(table: Table, text: str, option: str = "--compare") -> Label:
    """The column named ``text``: its values joined by ``,`` (``full``) or its header (``finetune=full``)."""
    if not table.col_keys:
        raise ConfigError(f"{option} compares two columns, but the table has one: choose them with --cols (e.g. --cols finetune).")
    names = {}
    for col in table.cols:
        names[",".join(format_label(v) for v in col)] = col
        names[label_text(table.col_keys, col)] = col
    if text in names:
        return names[text]
    shown = [label_text(table.col_keys, c) for c in table.cols]
    raise ConfigError(f"{option} column {text!r} is not a column of the table.{suggest(text, names)} Columns: {'; '.join(shown)}.")


def compare_columns(table: Table, col_a: Label, col_b: Label) -> list[RowComparison]:
    """Per row of ``table``: column B against column A (see the module docstring)."""
    out = []
    for row in table.rows:
        a, b = table.cell(row, col_a), table.cell(row, col_b)
        (values_a, problem_a), (values_b, problem_b) = seed_values(table, a), seed_values(table, b)
        notes = [f"{side}: {p}" for side, p in (("A", problem_a), ("B", problem_b)) if p]
        paired = paired_seed_test(values_b, values_a)
        if paired.note:
            notes.append(paired.note)
        mcnemar, note = _mcnemar(table, a, b, sorted(set(values_a) & set(values_b)))
        if note:
            notes.append(note)
        difference = b.mean - a.mean if a.mean is not None and b.mean is not None else None
        out.append(RowComparison(row, a, b, difference, paired, mcnemar, tuple(n.rstrip(".") for n in notes)))
    return out


def _mcnemar(table: Table, a: Cell, b: Cell, seeds: Sequence[int]) -> tuple[McNemarTest | None, str]:
    """McNemar's test on the seeds both cells ran, or None and why not."""
    if not table.metric.startswith("test/"):
        return None, f"McNemar: not run, predictions.csv holds test predictions and the metric is {table.metric}"
    if not seeds:
        return None, "McNemar: no seed run by both columns"
    pooled = []
    for side, cell in (("A", a), ("B", b)):
        runs = {run_seed(r): r for r in cell.runs if metric_value(r, table.metric) is not None}
        missing = [str(runs[s].path) for s in seeds if not (runs[s].path / PREDICTIONS_FILE).is_file()]
        if missing:
            return None, (f"McNemar: not run, {side} has no {PREDICTIONS_FILE} in {', '.join(missing[:3])} "
                          "(runs from before per-image predictions were recorded: re-run them)")
        pooled.append(pool_correctness({s: read_predictions(runs[s].path / PREDICTIONS_FILE) for s in seeds}))
    try:
        return mcnemar_test(pooled[0], pooled[1]), ""
    except ConfigError as exc:
        return None, f"McNemar: not run, {exc}"
