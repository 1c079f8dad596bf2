"""Writing a result :class:`~tlresearch.results.aggregate.Table` out: markdown, LaTeX or CSV.

Each format gives per cell the mean ± std, n and the runs without a value, the best mean per
column in bold, and on request the run directories behind each cell. The conventions behind
the numbers (sample std, ``–`` for n = 1, what counts as missing, percent, best) are stated
once, in :mod:`tlresearch.results.aggregate`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from tlresearch.core.errors import ConfigError, suggest
from tlresearch.results.aggregate import Cell, Table, metric_value
from tlresearch.results.grouping import Label, format_label

FORMATS = ("markdown", "latex", "csv")


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
                value = metric_value(run, table.metric)
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
