"""Writing ``--compare A B`` out: one line per table row, in markdown, LaTeX or CSV.

Each line gives both cells, the difference of their means (B - A), the paired t-test across
seeds (t, p, n) and McNemar's exact test on pooled per-image correctness (b, c, p, images), and
the notes that say why a test did not run. The statistics are :mod:`tlresearch.results.compare`'s.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from tlresearch.results.aggregate import Table
from tlresearch.results.compare import RowComparison
from tlresearch.results.formats import cell_parts, full_precision, latex_escape
from tlresearch.results.grouping import Label, format_label, label_text


def comparison_caption(table: Table, col_a: Label, col_b: Label) -> str:
    """What every column of the comparison means."""
    unit = " (percentage points)" if table.percent else ""
    return (
        f"{table.metric}: A = {label_text(table.col_keys, col_a)}, B = {label_text(table.col_keys, col_b)}. "
        f"B - A: difference of the cell means{unit}. Paired t-test: two-sided (scipy.stats.ttest_rel) over the seeds "
        "both columns ran, paired by seed, t > 0 when B is higher: it tests training-seed variation on a fixed test "
        "set. McNemar: exact two-sided test on top-1 correctness per test image (predictions.csv, whatever the "
        "metric), pooled over the paired seeds; b = images A got right and B wrong, c = the reverse. Pooling treats "
        "the (seed, image) pairs as independent, which overstates the evidence when seeds agree on the same images."
    )


def fmt_p(p: float | None) -> str:
    """A p-value for reading: 3 decimals, ``<0.001`` below."""
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _parts(table: Table, line: RowComparison, ci: bool) -> list[str]:
    """The readable fields of one line: A, B (as the table shows them), B - A, t-test, McNemar, notes."""
    cells = []
    for cell in (line.a, line.b):
        number, note = cell_parts(table, cell, ci)
        cells.append(note if number is None else f"{number} ({note})")
    difference = "–" if line.difference is None else f"{line.difference:+.{table.decimals}f}"
    paired = line.paired
    t_test = f"t={paired.t:.2f}, p={fmt_p(paired.p)}, n={paired.n}" if paired.p is not None else f"n={paired.n}"
    m = line.mcnemar
    mcnemar = f"b={m.b}, c={m.c}, p={fmt_p(m.p)}, images={m.n}" if m is not None else "–"
    return [*cells, difference, t_test, mcnemar, "; ".join(line.notes)]


HEADER = ["A", "B", "B - A", "paired t-test (seeds)", "McNemar (images)", "notes"]


def render_comparison(table: Table, lines: Sequence[RowComparison], col_a: Label, col_b: Label, fmt: str, ci: bool = False) -> str:
    """The comparison as ``markdown``, ``latex`` (a second booktabs tabular) or ``csv``; ``ci``:
    the cells as mean [95% interval], as in the table."""
    if fmt == "csv":
        return _csv(table, lines, col_a, col_b)
    row_headers = table.row_keys or [""]
    rows = [([format_label(v) for v in line.row] or ["all runs"], _parts(table, line, ci)) for line in lines]
    caption = comparison_caption(table, col_a, col_b)
    if fmt == "latex":
        out = [f"% {caption}", rf"\begin{{tabular}}{{{'l' * len(row_headers)}ccclll}}", r"\toprule",
               " & ".join(latex_escape(h) for h in [*row_headers, *HEADER]) + r" \\", r"\midrule"]
        out += [" & ".join(latex_escape(t).replace("±", r"$\pm$").replace("–", "--") for t in [*labels, *parts]) + r" \\"
                for labels, parts in rows]
        return "\n".join([*out, r"\bottomrule", r"\end{tabular}"]) + "\n"
    out = [f"_{caption}_", "", "| " + " | ".join([*row_headers, *HEADER]) + " |",
           "|" + "|".join(["---"] * len(row_headers) + ["---:"] * 3 + ["---"] * 3) + "|"]
    out += ["| " + " | ".join(t.replace("|", "\\|") for t in [*labels, *parts]) + " |" for labels, parts in rows]
    return "\n".join(out) + "\n"


def _csv(table: Table, lines: Sequence[RowComparison], col_a: Label, col_b: Label) -> str:
    """One CSV row per table row, full precision; empty fields where a test did not run."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*table.row_keys, "metric", "unit", "a", "b", "mean_a", "mean_b", "n_a", "n_b", "difference",
                     "t", "p_seeds", "n_seeds", "mcnemar_b", "mcnemar_c", "p_mcnemar", "n_images", "notes"])
    for line in lines:
        m = line.mcnemar
        writer.writerow([
            *(format_label(v) for v in line.row), table.metric, table.unit, label_text(table.col_keys, col_a),
            label_text(table.col_keys, col_b), full_precision(line.a.mean), full_precision(line.b.mean), line.a.n, line.b.n,
            full_precision(line.difference), full_precision(line.paired.t), full_precision(line.paired.p), line.paired.n,
            *([m.b, m.c, full_precision(m.p), m.n] if m is not None else ["", "", "", ""]), "; ".join(line.notes),
        ])
    return buf.getvalue()
