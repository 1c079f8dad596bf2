"""Result tables: the runs of each cell aggregated (mean ± std, counts of runs without a value).

Pure functions over :class:`~tlresearch.results.records.Run` lists: which runs share a cell is
:mod:`tlresearch.results.grouping`, how a :class:`Table` is written out is
:mod:`tlresearch.results.formats`, and the CLI is :mod:`tlresearch.table`.

Choices made here (they show up in every table, so they are stated once):

* **mean ± std** over the completed runs of a cell, with the *sample* std (ddof=1). With
  n = 1 the std is undefined: it is shown as ``–`` (``--`` in LaTeX, empty in CSV), never as 0,
  so a single run is not mistaken for a perfectly reproducible one.
* Runs that did not complete are **counted, never averaged and never dropped**: each cell
  reports how many runs failed, were interrupted or are missing. *Missing* covers a run
  directory without ``metrics.json``, a sweep combination with no run directory at all, and a
  completed run whose ``metrics.json`` lacks the requested metric.
* Accuracy-like metrics (``acc``, ``top5``, ``f1``, … in the name) whose values all lie in
  [0, 1] are shown as percentages with one decimal; ``percent=False`` turns this off,
  ``percent=True`` forces it for any metric in [0, 1].
* "Best" is the highest mean, except for metrics named like a loss, error or time (lowest);
  the best cell of each row is bold (of the column, in a one-column table), ties at the
  displayed precision all of them, and a row with a single value has none
  (:func:`~tlresearch.results.compare.table_marks`, which also marks the cells not
  significantly different from the best).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tlresearch.core.config import is_number
from tlresearch.core.errors import ConfigError, suggest
from tlresearch.results.grouping import Label, check_key, default_row_keys, label_of, label_sort_key, mixed_cell_warnings
from tlresearch.results.records import NOT_METRIC_KEYS, Run

DEFAULT_METRIC = "test/mean_class_acc"

_ACCURACY_TOKENS = {"acc", "accuracy", "f1", "precision", "recall", "auc", "auroc", "iou", "miou", "map"}
_LOWER_TOKENS = {"loss", "error", "err", "nll", "ece", "time", "latency", "s", "ms", "sec", "seconds"}


@dataclass
class Cell:
    """The runs of one (row, column) combination and their aggregate.

    ``values`` holds the metric of the completed runs in display units (percent when the
    table is in percent).
    """

    row: Label
    col: Label
    runs: list[Run] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    failed: int = 0
    interrupted: int = 0
    missing: int = 0

    @property
    def n(self) -> int:
        """Number of runs that contribute a value."""
        return len(self.values)

    @property
    def total(self) -> int:
        """Number of runs in the cell, whatever their status."""
        return len(self.runs)

    @property
    def incomplete(self) -> bool:
        """Whether some run of the cell gave no value (failed, interrupted or missing)."""
        return self.failed + self.interrupted + self.missing > 0

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for fewer than two values."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass
class Table:
    """A grouped, aggregated result table, ready to render."""

    metric: str
    row_keys: list[str]
    col_keys: list[str]
    rows: list[Label]
    cols: list[Label]
    cells: dict[tuple[Label, Label], Cell]
    percent: bool
    higher_is_better: bool
    decimals: int
    warnings: list[str] = field(default_factory=list)

    def cell(self, row: Label, col: Label = ()) -> Cell:
        return self.cells[(row, col)]

    def fmt(self, value: float | None) -> str:
        """A number at the table's precision (``–`` for None)."""
        if value is None:
            return "–"
        return f"{value:.{self.decimals}f}"

    @property
    def unit(self) -> str:
        return "%" if self.percent else ""


# ----------------------------------------------------------------------------- building


def build_table(
    runs: Sequence[Run],
    metric: str = DEFAULT_METRIC,
    rows: Sequence[str] | None = None,
    cols: Sequence[str] | None = None,
    percent: bool | None = None,
    goal: Literal["max", "min"] | None = None,
    decimals: int | None = None,
) -> Table:
    """Group ``runs`` by the ``rows`` and ``cols`` keys and aggregate ``metric`` per cell.

    Args:
        runs: from :func:`~tlresearch.results.records.find_runs`.
        metric: a ``metrics.json`` key.
        rows: table keys (see :meth:`Run.value`) for the rows; None: the keys that vary
            across runs, seed excluded (see :func:`~tlresearch.results.grouping.default_row_keys`).
        cols: table keys for the columns; None: one column.
        percent: None: automatic (accuracy-like metric in [0, 1]); True/False: force.
        goal: which mean is best: ``"max"``, ``"min"``, or None to infer from the name.
        decimals: digits after the point; None: 1 in percent, else from the magnitude.

    Raises:
        ConfigError: no runs, an unknown metric or an unknown row/column key.
    """
    if not runs:
        raise ConfigError("no runs to tabulate.")
    check_metric(runs, metric)
    col_keys = list(cols or [])
    row_keys = list(rows) if rows is not None else default_row_keys(runs, exclude=col_keys)
    for option, keys in (("--rows", row_keys), ("--cols", col_keys)):
        for key in keys:
            check_key(runs, key, option)

    raw = [metric_value(r, metric) for r in runs]
    finite = [v for v in raw if v is not None and math.isfinite(v)]
    table_warnings: list[str] = []
    use_percent = _decide_percent(metric, finite, percent, table_warnings)
    scale = 100.0 if use_percent else 1.0

    cells: dict[tuple[Label, Label], Cell] = {}
    for run, value in zip(runs, raw):
        key = (label_of(run, row_keys), label_of(run, col_keys))
        cell = cells.setdefault(key, Cell(row=key[0], col=key[1]))
        _add_run(cell, run, None if value is None else value * scale)
    row_labels = sorted({k[0] for k in cells}, key=label_sort_key)
    col_labels = sorted({k[1] for k in cells}, key=label_sort_key)
    for r in row_labels:  # the full grid: a combination nobody ran shows as an empty cell
        for c in col_labels:
            cells.setdefault((r, c), Cell(row=r, col=c))

    table_warnings += mixed_cell_warnings(cells.values(), row_keys + col_keys)
    return Table(
        metric=metric, row_keys=row_keys, col_keys=col_keys, rows=row_labels, cols=col_labels,
        cells=cells, percent=use_percent,
        higher_is_better=(goal == "max") if goal else higher_is_better(metric),
        decimals=decimals if decimals is not None else _auto_decimals(use_percent, [v * scale for v in finite]),
        warnings=table_warnings,
    )


def _add_run(cell: Cell, run: Run, value: float | None) -> None:
    cell.runs.append(run)
    if run.status == "completed":
        if value is None:
            cell.missing += 1  # completed, but this metric was never written
        else:
            cell.values.append(value)
    elif run.status == "interrupted":
        cell.interrupted += 1
    elif run.status == "missing":
        cell.missing += 1
    else:
        cell.failed += 1


def metric_value(run: Run, metric: str) -> float | None:
    """``metric`` of a completed run as a float; None when the run gave no (numeric) value."""
    if run.status != "completed" or not run.metrics:
        return None
    value = run.metrics.get(metric)
    if not is_number(value):
        return None
    return float(value)


def check_metric(runs: Sequence[Run], metric: str) -> None:
    """Raise ConfigError when no run recorded ``metric`` although runs recorded other metrics.

    When no run has any metric (all failed or missing) the name cannot be checked, and the
    table honestly shows every cell as failed/missing.
    """
    present: dict[str, None] = {}
    for run in runs:
        for key, value in (run.metrics or {}).items():
            if key not in NOT_METRIC_KEYS and is_number(value):
                present[key] = None
    if metric in present:
        return
    if any((r.metrics or {}).get(metric) is not None for r in runs):
        raise ConfigError(f"metric {metric!r} is not numeric in metrics.json; pick a numeric metric such as "
                          f"{', '.join(sorted(present)[:8])}.")
    if not present or any(metric in (r.metrics or {}) for r in runs):
        return  # nothing to check against, or recorded as null: the cells show it as missing
    raise ConfigError(
        f"unknown metric {metric!r}: no metrics.json of the {len(runs)} runs has it.{suggest(metric, present)} "
        f"Metrics present: {', '.join(sorted(present))}."
    )


# ----------------------------------------------------------------------------- units


def _tokens(metric: str) -> list[str]:
    return [t for t in re.split(r"[/_.\-\s]+", metric.lower()) if t]


def is_accuracy_like(metric: str) -> bool:
    """Whether ``metric`` names a fraction-of-correct quantity (acc, top5, f1, …)."""
    return any(t in _ACCURACY_TOKENS or re.fullmatch(r"top\d+", t) for t in _tokens(metric))


def higher_is_better(metric: str) -> bool:
    """Best = highest, except for losses, errors and times (throughput is higher-better)."""
    tokens = _tokens(metric)
    if "throughput" in tokens:
        return True
    return not any(t in _LOWER_TOKENS for t in tokens)


def _decide_percent(metric: str, values: list[float], percent: bool | None, out_warnings: list[str]) -> bool:
    in_unit = all(0.0 <= v <= 1.0 for v in values)
    if percent is None:
        return is_accuracy_like(metric) and in_unit
    if percent and not in_unit:
        out_warnings.append(f"--percent ignored: {metric} has values outside [0, 1].")
        return False
    return percent


def _auto_decimals(percent: bool, values: list[float]) -> int:
    """1 decimal in percent; otherwise about four significant digits, no exponent notation."""
    if percent:
        return 1
    if not values:
        return 3
    if all(float(v).is_integer() for v in values):
        return 0
    biggest = max(abs(v) for v in values)
    if biggest == 0:
        return 3
    return int(min(6, max(0, 3 - math.floor(math.log10(biggest)))))
