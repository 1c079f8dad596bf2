"""Result tables: group runs into cells, aggregate the seeds of each cell, render the table.

Pure functions over :class:`~tlresearch.results.records.Run` lists; the CLI is
:mod:`tlresearch.table`.

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
  ties at the displayed precision are all bold. A column with a single value has no bold.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tlresearch.core.errors import ConfigError, suggest
from tlresearch.results.records import Run, config_keys, config_leaves

DEFAULT_METRIC = "test/mean_class_acc"
FORMATS = ("markdown", "latex", "csv")

Label = tuple[Any, ...]

_ACCURACY_TOKENS = {"acc", "accuracy", "f1", "precision", "recall", "auc", "auroc", "iou", "miou", "map"}
_LOWER_TOKENS = {"loss", "error", "err", "nll", "ece", "time", "latency", "s", "ms", "sec", "seconds"}
_NOT_METRIC_KEYS = {"status", "error"}


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

    def best_rows(self, col: Label = ()) -> set[Label]:
        """The rows whose mean is best in ``col`` at the displayed precision (ties: all of them)."""
        means = {row: round(c.mean, self.decimals) for row in self.rows
                 if (c := self.cells[(row, col)]).mean is not None and math.isfinite(c.mean)}
        if len(means) < 2:
            return set()
        best = max(means.values()) if self.higher_is_better else min(means.values())
        return {row for row, m in means.items() if m == best}

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
            across runs, seed excluded (see :func:`default_row_keys`).
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

    raw = [_metric_value(r, metric) for r in runs]
    finite = [v for v in raw if v is not None and math.isfinite(v)]
    table_warnings: list[str] = []
    use_percent = _decide_percent(metric, finite, percent, table_warnings)
    scale = 100.0 if use_percent else 1.0

    cells: dict[tuple[Label, Label], Cell] = {}
    for run, value in zip(runs, raw):
        key = (label_of(run, row_keys), label_of(run, col_keys))
        cell = cells.setdefault(key, Cell(row=key[0], col=key[1]))
        _add_run(cell, run, None if value is None else value * scale)
    row_labels = sorted({k[0] for k in cells}, key=_label_sort_key)
    col_labels = sorted({k[1] for k in cells}, key=_label_sort_key)
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


def _metric_value(run: Run, metric: str) -> float | None:
    if run.status != "completed" or not run.metrics:
        return None
    value = run.metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
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
            if key not in _NOT_METRIC_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
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


def check_key(runs: Sequence[Run], key: str, option: str = "--rows") -> None:
    """Raise ConfigError when no run resolves ``key`` (config path, config group or metric)."""
    if any(run.has(key) for run in runs):
        return
    known: dict[str, None] = {}
    for run in runs:
        known.update(dict.fromkeys(config_keys(run.config)))
        known.update(dict.fromkeys(g for g in run.choices if not g.startswith("hydra/")))
        known.update(dict.fromkeys(k for k in (run.metrics or {}) if k not in _NOT_METRIC_KEYS))
    groups = sorted({g for r in runs for g in r.choices if not g.startswith("hydra/")})
    raise ConfigError(
        f"unknown {option} key {key!r}: it is not a config key, config group or metric of any of the "
        f"{len(runs)} runs.{suggest(key, known)} Use a dotted config path (e.g. optimizer.lr) or a config group"
        f"{' (' + ', '.join(groups) + ')' if groups else ''}."
    )


# ----------------------------------------------------------------------------- keys and labels


def default_row_keys(runs: Sequence[Run], exclude: Sequence[str] = ()) -> list[str]:
    """The keys whose values differ between runs, seeds excluded, in a stable order.

    First the command-line overrides (what a sweep varied, in the order given); when none
    varies, the config groups chosen; then the config leaves (a varying ``X.name`` stands for
    all of ``X``). Keys in ``exclude`` (the column keys) are left out.
    """
    def varies(key: str) -> bool:
        return len({_hashable(_safe_value(r, key)) for r in runs}) > 1

    def keep(key: str) -> bool:
        return key not in exclude and not _is_seed(key) and not key.startswith("hydra") and varies(key)

    candidates = list(dict.fromkeys(k for r in runs for k in r.override_dict))
    keys = [k for k in candidates if keep(k)]
    if keys:
        return keys
    groups = list(dict.fromkeys(g for r in runs for g in r.choices if not g.startswith("hydra/")))
    keys = [g for g in groups if keep(g)]
    if keys:
        return keys
    return [k for k in _varying_leaf_keys(runs) if keep(k)]


def _varying_leaf_keys(runs: Sequence[Run]) -> list[str]:
    leaves = [config_leaves(r.config) for r in runs if r.exists]
    all_keys = list(dict.fromkeys(k for leaf in leaves for k in leaf))
    varying = []
    for key in all_keys:
        values = [leaf.get(key) for leaf in leaves]
        if any(isinstance(v, str) and ("/" in v or "${" in v) for v in values):
            continue  # paths and unresolved interpolations differ per run without meaning anything
        if len({_hashable(v) for v in values}) > 1:
            varying.append(key)
    named = {k.rsplit(".", 1)[0] for k in varying if k.endswith(".name") and "." in k}
    return list(dict.fromkeys(
        next((n for n in named if k == f"{n}.name" or k.startswith(f"{n}.")), k) for k in varying
    ))


def label_of(run: Run, keys: Sequence[str]) -> Label:
    """The row (or column) label of ``run``: its values for ``keys`` (None where unresolved)."""
    return tuple(_hashable(_safe_value(run, k)) for k in keys)


def format_label(value: Any) -> str:
    """How a label value is printed: ``0.001``, ``resnet50``, ``true``, ``n/a`` for None."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _safe_value(run: Run, key: str) -> Any:
    try:
        return run.value(key)
    except KeyError:
        return None


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _is_seed(key: str) -> bool:
    return key.rsplit(".", 1)[-1].endswith("seed")


def _label_sort_key(label: Label) -> tuple[Any, ...]:
    def one(v: Any) -> tuple[Any, ...]:
        if v is None:
            return (2, 0, "")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, v, "")
        return (1, 0, str(v))
    return tuple(one(v) for v in label)


def mixed_cell_warnings(cells: Sequence[Cell] | Any, grouped_keys: Sequence[str]) -> list[str]:
    """Warn when runs averaged into one cell differ in an override other than the seed.

    Averaging runs with different learning rates is a silent error in a paper table; the fix
    is to add the key to ``--rows`` or ``--cols``.
    """
    spread: dict[str, set[Any]] = {}
    for cell in cells:
        if len(cell.runs) < 2:
            continue
        keys = {k for r in cell.runs for k in r.override_dict}
        for key in keys:
            if key in grouped_keys or _is_seed(key) or key.startswith("hydra"):
                continue
            # Compare resolved values: "optimizer.lr=0.01" in one run and the 0.01 default in
            # another are the same setting.
            values = {_hashable(_safe_value(r, key)) for r in cell.runs}
            if len(values) > 1:
                spread.setdefault(key, set()).update(format_label(v) for v in values)
    return [
        f"runs averaged into the same cell differ in {key!r} (values: "
        f"{', '.join(sorted(str(v) for v in values))}); add it to --rows or --cols to separate them."
        for key, values in spread.items()
    ]


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


# ----------------------------------------------------------------------------- rendering


def render(table: Table, fmt: str = "markdown", show_runs: bool = False) -> str:
    """Render ``table`` as ``markdown``, ``latex`` or ``csv``."""
    renderers = {"markdown": render_markdown, "latex": render_latex, "csv": render_csv}
    if fmt not in renderers:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.{suggest(fmt, FORMATS)}")
    return renderers[fmt](table, show_runs=show_runs)


def cell_parts(table: Table, cell: Cell) -> tuple[str | None, str]:
    """``(number, note)`` of a cell: ``("71.2 ± 0.4", "n=2, 1 failed")``.

    A cell without any value has no number and a note that says why: ``"failed (n=0/1)"``,
    ``"missing (n=0/2)"``, ``"no result (n=0/3: 1 failed, 2 missing)"``, or ``"—"`` when the
    combination has no run at all.
    """
    problems = [f"{count} {what}" for count, what in
                ((cell.failed, "failed"), (cell.interrupted, "interrupted"), (cell.missing, "missing")) if count]
    if cell.total == 0:
        return None, "—"
    if cell.n == 0:
        if len(problems) == 1:
            return None, f"{problems[0].split(' ', 1)[1]} (n=0/{cell.total})"
        return None, f"no result (n=0/{cell.total}: {', '.join(problems)})"
    number = f"{table.fmt(cell.mean)} ± {table.fmt(cell.std)}"
    return number, ", ".join([f"n={cell.n}", *problems])


def _col_header(table: Table, col: Label) -> str:
    if not table.col_keys:
        return f"{table.metric} ({table.unit})" if table.unit else table.metric
    return ", ".join(f"{k}={format_label(v)}" for k, v in zip(table.col_keys, col))


def _caption(table: Table) -> str:
    unit = " in %" if table.percent else ""
    best = "highest" if table.higher_is_better else "lowest"
    grouping = f"rows: {', '.join(table.row_keys) or '(all runs)'}"
    if table.col_keys:
        grouping += f"; columns: {', '.join(table.col_keys)}"
    return (f"{table.metric}{unit}: mean ± sample std (ddof=1) over the runs of each cell, n = runs with a value; "
            f"bold = {best} per column; {grouping}.")


def render_markdown(table: Table, show_runs: bool = False) -> str:
    """A GitHub-flavoured markdown table; the best cell per column in bold."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    row_headers = table.row_keys or [""]
    header = [*row_headers, *(_col_header(table, c) for c in table.cols)]
    lines = [f"_{esc(_caption(table))}_", "", "| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(["---"] * len(row_headers) + ["---:"] * len(table.cols)) + "|"]
    best = {col: table.best_rows(col) for col in table.cols}
    for row in table.rows:
        labels = [format_label(v) for v in row] or ["all runs"]
        texts = []
        for col in table.cols:
            number, note = cell_parts(table, table.cell(row, col))
            if number is None:
                texts.append(note)
            else:
                bold = "**" if row in best[col] else ""
                texts.append(f"{bold}{number}{bold} ({note})")
        lines.append("| " + " | ".join(esc(t) for t in [*labels, *texts]) + " |")
    if show_runs:
        lines += ["", "Runs per cell:", ""] + [f"- {line}" if not line.startswith("  ") else line
                                                for line in _provenance_lines(table)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (underscores in metric and backbone names, …)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def render_latex(table: Table, show_runs: bool = False) -> str:
    """A booktabs ``tabular``; the best cell per column in ``\\textbf{}``.

    To keep a paper table readable, the ``(n=…)`` note appears only in cells that are
    incomplete or whose n differs from the table's largest n; the caption comment states n.
    """
    max_n = max((c.n for c in table.cells.values()), default=0)
    row_headers = table.row_keys or [""]
    spec = "l" * len(row_headers) + "c" * len(table.cols)
    lines = [f"% {_caption(table)} Largest n per cell: {max_n}.", r"% Requires \usepackage{booktabs}.",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in [*row_headers, *(_col_header(table, c) for c in table.cols)])
             + r" \\", r"\midrule"]
    best = {col: table.best_rows(col) for col in table.cols}
    for row in table.rows:
        labels = [latex_escape(format_label(v)) for v in row] or ["all runs"]
        texts = []
        for col in table.cols:
            cell = table.cell(row, col)
            number, note = cell_parts(table, cell)
            if number is None:
                texts.append("--" if note == "—" else latex_escape(note))
                continue
            tex = latex_escape(number).replace("±", r"$\pm$").replace("–", "--")
            if row in best[col]:
                tex = rf"\textbf{{{tex}}}"
            if cell.incomplete or cell.n != max_n:
                tex += rf" {{\footnotesize ({latex_escape(note)})}}"
            texts.append(tex)
        lines.append(" & ".join([*labels, *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if show_runs:
        lines += ["% Runs per cell:"] + [f"% {line}" for line in _provenance_lines(table)]
    return "\n".join(lines) + "\n"


def render_csv(table: Table, show_runs: bool = False) -> str:
    """One CSV row per cell that has runs, with full-precision mean/std in the table's unit.

    Columns: the row keys, the column keys, ``metric``, ``unit`` (``%`` or empty), ``mean``,
    ``std`` (empty for n < 2), ``n``, ``failed``, ``interrupted``, ``missing`` and, with
    ``show_runs``, ``runs`` (the run directories, ``;``-separated).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [*table.row_keys, *table.col_keys, "metric", "unit", "mean", "std", "n", "failed", "interrupted",
              "missing"]
    writer.writerow(header + (["runs"] if show_runs else []))
    for row in table.rows:
        for col in table.cols:
            cell = table.cell(row, col)
            if cell.total == 0:
                continue  # a combination nobody ran or expected: nothing to report
            record = [*(format_label(v) for v in row), *(format_label(v) for v in col), table.metric, table.unit,
                      _num(cell.mean), _num(cell.std), cell.n, cell.failed, cell.interrupted, cell.missing]
            if show_runs:
                record.append(";".join(_display_path(r.path) for r in cell.runs))
            writer.writerow(record)
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _provenance_lines(table: Table) -> list[str]:
    """For each cell with runs: its label and summary, then one indented line per run."""
    lines = []
    for row in table.rows:
        for col in table.cols:
            cell = table.cell(row, col)
            if cell.total == 0:
                continue
            where = ", ".join(f"{k}={format_label(v)}" for k, v in
                              zip([*table.row_keys, *table.col_keys], [*row, *col])) or "all runs"
            number, note = cell_parts(table, cell)
            lines.append(f"{where}: {number + ' (' + note + ')' if number else note}")
            for run in cell.runs:
                text = run.describe().replace(str(run.path), _display_path(run.path), 1)
                value = _metric_value(run, table.metric)
                if value is not None:
                    text += f" {table.metric}={table.fmt(value * (100.0 if table.percent else 1.0))}{table.unit}"
                lines.append(f"  - {text}")
    return lines


def _display_path(path: Path) -> str:
    """Relative to the working directory when below it (shorter), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(path)
