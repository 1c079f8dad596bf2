"""The tuning protocol in one command: search on validation, refit the best setting with N seeds
on train+val, test once, and the table of the refits.

Examples::

    # the whole protocol: the search runs into DIR, the refit into DIR/refit, then the table
    python -m tlresearch.study DIR --seeds 3 hparams_search=lr_wd +experiment=pets_kornblith backbone=resnet50 finetune=full
    # refit a search already run (python -m tlresearch.train hparams_search=lr_wd ...), on a GPU
    python -m tlresearch.study outputs/train/multiruns/2024-05-01/12-00-00 --seeds 3 trainer=gpu

When DIR holds a finished search (``optimization_results.yaml``), it is not run again and the
overrides only add to the refit (``trainer=gpu``); otherwise the overrides are the search's. The
refit trains the search's settings at its best point on train+val (``data.val_per_class=0``),
without model selection (the last epoch is tested), for seeds 0..N-1. The table goes to stdout,
the steps and their commands to stderr; a user mistake exits with status 2 and one paragraph.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tlresearch import table
from tlresearch.core.errors import ConfigError
from tlresearch.results.aggregate import DEFAULT_METRIC
from tlresearch.results.formats import FORMATS
from tlresearch.results.search import RESULTS_FILE, Search, read_search
from tlresearch.runner.study import REFIT_DIR, refit_overrides, run_refit, run_search


def study(search_dir: str | Path, seeds: int, overrides: Sequence[str] = (), trainval: bool = True) -> tuple[Search, Path]:
    """Run the protocol; return the search and the refit's sweep directory.

    Args:
        search_dir: the search's sweep directory (run into it first when it holds no finished search).
        seeds: the refit's seeds, 0..seeds-1.
        overrides: the search's command line when it is run here; else additions to the refit's.
        trainval: refit on train+val (else on the training split alone).
    """
    search_dir = Path(search_dir)
    ran_search = not (search_dir / RESULTS_FILE).is_file()
    if ran_search:
        run_search(overrides, search_dir)
    search = read_search(search_dir)
    best = " ".join(f"{k}={v}" for k, v in search.best_params.items())
    trial = f" (trial {search.best_trial.path.name})" if search.best_trial else ""
    print(f"\n[search] {search_dir}: {len(search.trials)} trials of hparams_search={search.name}; best {search.metric}="
          f"{search.best_value:.4f} at {best}{trial}", file=sys.stderr)
    refit_dir = search_dir / REFIT_DIR
    run_refit(refit_overrides(search, seeds, () if ran_search else overrides, trainval), refit_dir)
    return search, refit_dir


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used to document the options)."""
    parser = argparse.ArgumentParser(
        prog="python -m tlresearch.study",
        description="Search on validation, refit the best setting on train+val with several seeds, test once, "
                    "and print the table of the refits.",
    )
    parser.add_argument("dir", metavar="DIR", help="the search's sweep directory: a finished search to refit, or where to run it")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="the search's overrides (hparams_search=lr_wd ...) when DIR holds no finished search; "
                             "else overrides added to the refit (trainer=gpu)")
    parser.add_argument("--seeds", type=int, default=3, help="refit seeds 0..N-1 (default: 3)")
    parser.add_argument("--trainval", action=argparse.BooleanOptionalAction, default=True,
                        help="refit on train+val (default), or with --no-trainval on the training split alone")
    parser.add_argument("--rows", default=None, metavar="KEY[,KEY…]", help="table rows (see python -m tlresearch.table)")
    parser.add_argument("--cols", default=None, metavar="KEY[,KEY…]", help="table columns")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"metrics.json key (default: {DEFAULT_METRIC})")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="table format (default: markdown)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 for a user mistake)."""
    args = build_parser().parse_intermixed_args(argv)
    try:
        _, refit_dir = study(args.dir, args.seeds, args.overrides, args.trainval)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table_args = [str(refit_dir), "--metric", args.metric, "--format", args.format]
    table_args += [arg for option in ("rows", "cols") if getattr(args, option) for arg in (f"--{option}", getattr(args, option))]
    print(f"\n[table] python -m tlresearch.table {shlex.join(table_args)}", file=sys.stderr, flush=True)
    return table.main(table_args)


if __name__ == "__main__":
    sys.exit(main())
