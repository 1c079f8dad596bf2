"""The feature cache: ``python -m tlresearch.cache list|clear [--older-than DAYS] [--cache-dir DIR]``.

Examples::

    python -m tlresearch.cache list                      # entries: backbone, dataset, split, size, last use
    python -m tlresearch.cache clear --older-than 30     # remove entries unused for more than 30 days
    python -m tlresearch.cache clear --cache-dir /scratch/me/tlresearch

``--cache-dir`` is ``paths.cache_dir`` (the features are in its ``features/`` folder); by
default the one the configs use (``conf/paths/default.yaml``: ``$TLRESEARCH_CACHE``, else
``~/.cache/tlresearch``). Entries in use by a running process are never removed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from omegaconf import OmegaConf

from tlresearch.core.errors import ConfigError
from tlresearch.protocols.cache_admin import clear_entries, entries_table, feature_cache
from tlresearch.runner.entry import config_dir


def default_paths() -> tuple[str, float | None]:
    """``(paths.cache_dir, paths.cache_max_gb)`` as the configs resolve them."""
    paths = OmegaConf.load(config_dir() / "paths" / "default.yaml")
    return str(paths.cache_dir), paths.get("cache_max_gb")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tlresearch.cache", description="List or clear the frozen-backbone feature cache.")
    parser.add_argument("command", choices=["list", "clear"], help="list: show the entries; clear: remove entries")
    parser.add_argument("--older-than", type=float, metavar="DAYS", help="clear: only entries unused for more than DAYS days")
    parser.add_argument("--cache-dir", metavar="DIR", help="paths.cache_dir (default: the configs' one)")
    return parser


def run(args: argparse.Namespace) -> str:
    """The command's output (a ConfigError for a user mistake)."""
    default_dir, max_gb = default_paths()
    cache = feature_cache(args.cache_dir or default_dir, max_gb=max_gb)
    if args.command == "clear":
        return clear_entries(cache, args.older_than).report()
    if args.older_than is not None:
        raise ConfigError("--older-than applies to clear only: use `clear --older-than DAYS`.")
    return entries_table(cache)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0, or 2 for a user mistake, reported on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        output = run(args)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
