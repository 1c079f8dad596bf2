"""Result tables from run directories: ``python -m tlresearch.table DIR… [options]``.

Examples::

    python -m tlresearch.table multirun/2024-05-01/12-00-00
    python -m tlresearch.table multirun/ --rows backbone --cols finetune --format latex
    python -m tlresearch.table outputs/ --metric test/acc --plot acc.png --show-runs
    python -m tlresearch.table multirun/ --rows backbone --cols finetune --ci
    python -m tlresearch.table multirun/ --rows backbone --cols finetune --compare linear_probe full
    python -m tlresearch.table multirun/ --rows backbone,finetune --cols data --metric literature --average --groups vtab

The table goes to stdout; warnings (e.g. runs with different settings averaged together)
and errors go to stderr. A user mistake (no runs, unknown metric or key) exits with status 2
and a one-paragraph message, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from tlresearch.core.errors import ConfigError
from tlresearch.results.aggregate import DEFAULT_METRIC, build_table
from tlresearch.results.compare import compare_columns, find_column, table_marks
from tlresearch.results.compare_formats import render_comparison
from tlresearch.results.formats import FORMATS, render
from tlresearch.results.plots import plot_table
from tlresearch.results.records import find_runs
from tlresearch.results.suites import GROUPS, LITERATURE, LITERATURE_KEY, add_summary_columns, with_literature_metric


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used to document the options)."""
    parser = argparse.ArgumentParser(
        prog="python -m tlresearch.table",
        description="Tabulate a metric over run directories: one cell per (row, column) setting, "
                    "mean ± sample std over its runs (seeds) or mean [95% interval], failed and missing runs "
                    "counted; the best cell of each row in bold, † on the cells not significantly different "
                    "from it (paired t-test across seeds).",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="run directories, sweep directories (multirun/DATE/TIME) or folders holding them")
    parser.add_argument("--rows", type=_key_list, default=None, metavar="KEY[,KEY…]",
                        help="keys for the rows: config paths (optimizer.lr), config groups (backbone) or "
                             "metrics; default: the keys that vary across runs, seed excluded")
    parser.add_argument("--cols", type=_key_list, default=None, metavar="KEY[,KEY…]",
                        help="keys for the columns (default: a single column)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help=f"metrics.json key (default: {DEFAULT_METRIC}), or '{LITERATURE}': each dataset's metric "
                             "as the literature reports it (test/primary; for older runs mean per-class accuracy on "
                             "aircraft, caltech101, flowers102, pets and top-1 elsewhere)")
    parser.add_argument("--average", action="store_true",
                        help="add a column with each row's mean over the dataset columns (use with --cols data)")
    parser.add_argument("--groups", choices=tuple(GROUPS), default=None,
                        help="add group-mean columns: vtab = VTAB's natural / specialized / structured")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default: markdown)")
    parser.add_argument("--plot", metavar="FILE", default=None, help="also write a grouped bar chart PNG to FILE")
    parser.add_argument("--show-runs", action="store_true",
                        help="list the run directories behind each cell (provenance)")
    parser.add_argument("--percent", action=argparse.BooleanOptionalAction, default=None,
                        help="show fractions in [0, 1] as percentages (default: for accuracy-like metrics)")
    parser.add_argument("--goal", choices=("max", "min"), default=None,
                        help="which mean is best (bold); default: min for losses/errors/times, else max")
    parser.add_argument("--decimals", type=int, default=None, help="digits after the decimal point")
    parser.add_argument("--ci", action="store_true",
                        help="cells as mean [95%% interval]: with n >= 2 runs Student's t-interval over the seeds, "
                             "with one run its bootstrap interval over test images (metrics.json <metric>_ci_low/high)")
    parser.add_argument("--compare", nargs=2, metavar=("COL_A", "COL_B"), default=None,
                        help="after the table, per row: B - A, the paired t-test across seeds and McNemar's exact "
                             "test on the pooled per-image test predictions (predictions.csv); a column is named by "
                             "its value(s) (full) or its header (finetune=full); with --format csv only this comparison "
                             "is printed")
    return parser


def _key_list(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 for a user mistake)."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs = find_runs(args.dirs)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        if not runs:
            raise ConfigError(
                f"no runs found under {', '.join(args.dirs)}: a run directory is one that holds Hydra's .hydra/ "
                "folder (train writes it into outputs/DATE/TIME/ or multirun/DATE/TIME/N/); pass such a directory "
                "or a folder above it."
            )
        metric = args.metric
        if metric == LITERATURE:
            runs, metric = with_literature_metric(runs), LITERATURE_KEY
        table = build_table(runs, metric=metric, rows=args.rows, cols=args.cols, percent=args.percent,
                            goal=args.goal, decimals=args.decimals)
        comparison = None
        if args.compare:
            col_a, col_b = (find_column(table, name) for name in args.compare)
            comparison = (compare_columns(table, col_a, col_b), col_a, col_b)
        marks = table_marks(table)
        if args.average or args.groups:  # after the marks: summary columns do not compete for bold
            add_summary_columns(table, average=args.average, groups=args.groups)
        for message in [*table.warnings, *marks.warnings]:
            print(f"warning: {message}", file=sys.stderr)
        if comparison is None or args.format != "csv":  # one CSV per output: with --compare, the comparison's
            sys.stdout.write(render(table, args.format, show_runs=args.show_runs, ci=args.ci, marks=marks))
        if comparison is not None:
            sys.stdout.write(("" if args.format == "csv" else "\n") + render_comparison(table, *comparison, args.format, ci=args.ci))
        if args.plot:
            print(f"wrote {plot_table(table, args.plot)}", file=sys.stderr)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
