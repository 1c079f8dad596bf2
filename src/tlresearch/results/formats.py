"""Writing a result :class:`~tlresearch.results.aggregate.Table` out: markdown, LaTeX or CSV.

Each format gives per cell the mean ± std (or, with ``ci``, the mean and its 95% interval), n
and the runs without a value, the best cell of each row in bold and the cells not significantly
different from it marked (:func:`~tlresearch.results.compare.table_marks`; markdown and LaTeX),
and on request the run directories behind each cell. The conventions behind the numbers
(sample std, ``–`` for n = 1, what counts as missing, percent, best) are stated once, in
:mod:`tlresearch.results.aggregate`; those of the intervals and marks in
:mod:`tlresearch.results.compare`.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from tlresearch.core.errors import ConfigError, suggest
from tlresearch.results.aggregate import Cell, Table, metric_value
from tlresearch.results.compare import Marks, cell_interval, table_marks
from tlresearch.results.grouping import Label, format_label, label_text

FORMATS = ("markdown", "latex", "csv")


def render(table: Table, fmt: str = "markdown", show_runs: bool = False, ci: bool = False, marks: Marks | None = None) -> str:
    """Render ``table`` as ``markdown``, ``latex`` or ``csv``; ``ci``: cells as mean [95% interval];
    ``marks``: the bold and not-significant marks (default: :func:`table_marks`)."""
    renderers = {"markdown": render_markdown, "latex": render_latex, "csv": render_csv}
    if fmt not in renderers:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.{suggest(fmt, FORMATS)}")
    if fmt == "csv":
        return render_csv(table, show_runs=show_runs, ci=ci)
    return renderers[fmt](table, show_runs=show_runs, ci=ci, marks=marks if marks is not None else table_marks(table))


def cell_parts(table: Table, cell: Cell, ci: bool = False) -> tuple[str | None, str]:
    """``(number, note)`` of a cell: ``("71.2 ± 0.4", "n=2, 1 failed")``; with ``ci``
    ``("71.2 [70.1, 72.3]", "n=2, 1 failed")`` (``bootstrap`` in the note for one run's interval
    over test images, or why there is no interval).

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
    if not ci:
        return f"{table.fmt(cell.mean)} ± {table.fmt(cell.std)}", ", ".join([f"n={cell.n}", *problems])
    interval = cell_interval(table, cell)
    if interval.low is None:
        return table.fmt(cell.mean), ", ".join([f"n={cell.n}", *problems, interval.note])
    number = f"{table.fmt(cell.mean)} [{table.fmt(interval.low)}, {table.fmt(interval.high)}]"
    return number, ", ".join([f"n={cell.n}", *problems, *(["bootstrap"] if interval.method == "bootstrap" else [])])


def _col_header(table: Table, col: Label) -> str:
    if not table.col_keys:
        return f"{table.metric} ({table.unit})" if table.unit else table.metric
    return label_text(table.col_keys, col)


#: How the marks are printed: (best, not significantly different from it).
DAGGER = "†"


def _caption(table: Table, ci: bool, marks: Marks) -> str:
    unit = " in %" if table.percent else ""
    grouping = f"rows: {', '.join(table.row_keys) or '(all runs)'}"
    if table.col_keys:
        grouping += f"; columns: {', '.join(table.col_keys)}"
    if ci:
        cells = (f"mean [95% interval] of the runs of each cell, n = runs with a value; the interval is, for n >= 2, "
                 f"Student's t-interval over the seeds (mean ± t(0.975, n-1)·s/√n: training-seed variation on a fixed "
                 f"test set) and, for n = 1 ('bootstrap'), that run's percentile bootstrap over its test images "
                 f"(metrics.json {table.metric}_ci_low/high)")
    else:
        cells = "mean ± sample std (ddof=1) over the runs of each cell, n = runs with a value"
    return f"{table.metric}{unit}: {cells}; {_marks_legend(table, marks)}; {grouping}."


def _marks_legend(table: Table, marks: Marks) -> str:
    """What bold and the dagger mean (markdown caption, LaTeX footnote)."""
    best = "highest" if table.higher_is_better else "lowest"
    return (f"bold = {best} mean per {marks.along}; {DAGGER} = not significantly different from the bold cell of its "
            f"{marks.along} (two-sided paired t-test across seeds, p >= 0.05; a cell with fewer than 2 seeds in common "
            f"with it carries no mark)")


def _marked(table: Table, key: tuple[Label, Label], number: str, marks: Marks, bold: str, dagger: str) -> str:
    """``number`` in bold (``bold`` wraps it, e.g. ``**{}**``) or followed by ``dagger``, per ``marks``."""
    if key in marks.best:
        return bold.format(number)
    return number + dagger if key in marks.same else number


def render_markdown(table: Table, show_runs: bool = False, ci: bool = False, marks: Marks | None = None) -> str:
    """A GitHub-flavoured markdown table; the best cell per row in bold, † for the cells not
    significantly different from it (see :func:`~tlresearch.results.compare.table_marks`)."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    marks = marks if marks is not None else table_marks(table)
    row_headers = table.row_keys or [""]
    header = [*row_headers, *(_col_header(table, c) for c in table.cols)]
    lines = [f"_{esc(_caption(table, ci, marks))}_", "", "| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(["---"] * len(row_headers) + ["---:"] * len(table.cols)) + "|"]
    for row in table.rows:
        labels = [format_label(v) for v in row] or ["all runs"]
        texts = []
        for col in table.cols:
            number, note = cell_parts(table, table.cell(row, col), ci)
            texts.append(note if number is None else f"{_marked(table, (row, col), number, marks, '**{}**', DAGGER)} ({note})")
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


def render_latex(table: Table, show_runs: bool = False, ci: bool = False, marks: Marks | None = None) -> str:
    """A booktabs ``tabular``; the best cell per row in ``\\textbf{}``, ``$^\\dagger$`` after the
    cells not significantly different from it, explained in a footnote line below the tabular.

    To keep a paper table readable, the ``(n=…)`` note appears only in cells that are
    incomplete or whose n differs from the table's largest n; the caption comment states n.
    """
    marks = marks if marks is not None else table_marks(table)
    max_n = max((c.n for c in table.cells.values()), default=0)
    row_headers = table.row_keys or [""]
    spec = "l" * len(row_headers) + "c" * len(table.cols)
    lines = [f"% {_caption(table, ci, marks)} Largest n per cell: {max_n}.", r"% Requires \usepackage{booktabs}.",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in [*row_headers, *(_col_header(table, c) for c in table.cols)])
             + r" \\", r"\midrule"]
    for row in table.rows:
        labels = [latex_escape(format_label(v)) for v in row] or ["all runs"]
        texts = []
        for col in table.cols:
            cell = table.cell(row, col)
            number, note = cell_parts(table, cell, ci)
            if number is None:
                texts.append("--" if note == "—" else latex_escape(note))
                continue
            tex = _marked(table, (row, col), latex_escape(number).replace("±", r"$\pm$").replace("–", "--"), marks,
                          r"\textbf{{{}}}", r"$^\dagger$")
            if cell.incomplete or cell.n != max_n or note.endswith("bootstrap") or "no interval" in note:
                tex += rf" {{\footnotesize ({latex_escape(note)})}}"
            texts.append(tex)
        lines.append(" & ".join([*labels, *texts]) + r" \\")
    legend = latex_escape(_marks_legend(table, marks)).replace(DAGGER, r"$^\dagger$").replace("p >= 0.05", r"$p \geq 0.05$")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\par{{\footnotesize {legend[0].upper() + legend[1:]}.}}"]
    if show_runs:
        lines += ["% Runs per cell:"] + [f"% {line}" for line in _provenance_lines(table)]
    return "\n".join(lines) + "\n"


def render_csv(table: Table, show_runs: bool = False, ci: bool = False) -> str:
    """One CSV row per cell that has runs, with full-precision mean/std in the table's unit.

    Columns: the row keys, the column keys, ``metric``, ``unit`` (``%`` or empty), ``mean``,
    ``std`` (empty for n < 2), ``n``, ``failed``, ``interrupted``, ``missing``; with ``ci``,
    ``ci_low``, ``ci_high`` and ``interval`` (``t``: over seeds, ``bootstrap``: one run over its
    test images, empty: none; see :func:`~tlresearch.results.compare.cell_interval`); with
    ``show_runs``, ``runs`` (the run directories, ``;``-separated).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [*table.row_keys, *table.col_keys, "metric", "unit", "mean", "std", "n", "failed", "interrupted",
              "missing"]
    writer.writerow(header + (["ci_low", "ci_high", "interval"] if ci else []) + (["runs"] if show_runs else []))
    for row in table.rows:
        for col in table.cols:
            cell = table.cell(row, col)
            if cell.total == 0:
                continue  # a combination nobody ran or expected: nothing to report
            record = [*(format_label(v) for v in row), *(format_label(v) for v in col), table.metric, table.unit,
                      full_precision(cell.mean), full_precision(cell.std), cell.n, cell.failed, cell.interrupted, cell.missing]
            if ci:
                interval = cell_interval(table, cell)
                record += [full_precision(interval.low), full_precision(interval.high), interval.method]
            if show_runs:
                record.append(";".join(_display_path(r.path) for r in cell.runs))
            writer.writerow(record)
    return buf.getvalue()


def full_precision(value: float | None) -> str:
    """A number for CSV: every digit (``repr``), empty for None."""
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
