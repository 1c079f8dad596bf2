"""Launching the two sweeps of a tuning protocol: the search, then the refit of its best setting.

The protocol (Kornblith et al. 2019, as most transfer-learning papers use it): choose the
hyper-parameters on a validation split, then train the chosen setting again on train+val with
several seeds and test each once. Both steps are ordinary ``python -m tlresearch.train``
sweeps, launched here as subprocesses exactly as a user would type them (the command is
printed first), so either step can be re-run by hand:

* :func:`run_search` runs ``hparams_search=<name> …`` into a given sweep directory;
* :func:`refit_overrides` turns a finished search (:class:`~tlresearch.results.search.Search`)
  into the refit's command line: the search's own overrides, its best point, seeds 0..N-1, and
  the protocol's changes (:data:`REFIT_PROTOCOL`, :func:`trainval_overrides`);
* :func:`run_refit` runs that multirun into ``<search dir>/refit``.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from tlresearch.core.config import check_int
from tlresearch.core.errors import ConfigError
from tlresearch.data.splits import SUBSETS
from tlresearch.results.records import is_run_dir
from tlresearch.results.search import RESULTS_FILE, Search, override_key

log = logging.getLogger("tlresearch.study")

TRAIN = "tlresearch.train"
SEARCH_KEY = "hparams_search"
SEED = "seed"
REFIT_DIR = "refit"
STDERR_FD = 2
SWEEPER_KEYS = ("hydra.sweeper", "hydra/sweeper")  # settings of the search's Optuna sweeper, not the refit's
#: What the refit changes besides the data: no model selection (nothing to select on, the last
#: epoch is tested), nothing returned to a sweeper, and the test split evaluated once.
REFIT_PROTOCOL = ("optimized_metric=null", "test_after_fit=true")
VTAB1K, VTAB1K_FULL = SUBSETS  # VTAB-1k's search subset (800 train + 200 val) and its refit (all 1,000)


def run_search(overrides: Sequence[str], sweep_dir: Path) -> None:
    """Run the search ``overrides`` select (``hparams_search=<name> …``) into ``sweep_dir``."""
    keys = [override_key(o) for o in overrides]
    if SEARCH_KEY not in keys:
        given = " ".join(overrides) or "none"
        raise ConfigError(f"{sweep_dir} holds no finished search ({RESULTS_FILE}): pass the search to run there (hparams_search="
                          f"lr_wd and its settings; overrides given: {given}), or the sweep directory of a finished search.")
    if sweep_dir.is_dir() and any(is_run_dir(p) for p in sweep_dir.iterdir()):
        raise ConfigError(f"{sweep_dir} holds trials but no {RESULTS_FILE}: that search did not finish (stopped, or every trial "
                          "failed: see the trials' metrics.json). Run the study in a new directory.")
    launch([*overrides, f"hydra.sweep.dir={sweep_dir}"], "search")


def refit_overrides(search: Search, seeds: int, extra: Sequence[str] = (), trainval: bool = True) -> list[str]:
    """The command line of the refit of ``search``: the setting that was searched, at its best point,
    on train+val (``trainval``; else on the training split alone), seeds ``0..seeds-1``, tested once.

    ``extra`` overrides are added (and replace the search's for the same key: e.g. ``trainer=gpu``);
    they may not set the seed or a searched key.
    """
    check_int("--seeds", seeds, minimum=1)
    extra = _checked_extra(search, extra)
    best = [f"{key}={_override_value(value)}" for key, value in search.best_params.items()]
    config = search.trials[0].config
    data = trainval_overrides(config.get("data") or {}, search.trials[0].choices.get("data")) if trainval else []
    selection = ["callbacks.model_checkpoint.monitor=null"] if "model_checkpoint" in (config.get("callbacks") or {}) else []
    seed = f"{SEED}={','.join(str(s) for s in range(seeds))}"
    refit = [*best, *data, *selection, *REFIT_PROTOCOL, *extra, seed]
    replaced = {override_key(o) for o in refit} | {SEARCH_KEY}
    return [*(o for o in search.overrides if override_key(o) not in replaced), *refit]


def trainval_overrides(data: Mapping[str, Any], name: str | None) -> list[str]:
    """The data overrides that train on train+val while the test split stays the same.

    Only a dataset whose test split does not depend on the validation split can: one with an
    official test split and ``val_per_class`` (``data=pets``: ``data.val_per_class=0``). Datasets
    that carve val and test from one pool by fractions (``cats_dogs``, ``folder``) would move
    their test split with ``val_fraction=0``. A VTAB-1k search (``data.subset=vtab1k``: 800
    train + 200 val drawn from train+val) refits on those 1,000 (``vtab1k_full``) on any
    dataset: the test split stays whole there.
    """
    if data.get("subset") == VTAB1K:
        return [f"data.subset={VTAB1K_FULL}"]
    if "val_per_class" in data:
        return ["data.val_per_class=0"]
    raise ConfigError(
        f"data={name} cannot refit on train+val: its validation and test splits are carved from one pool "
        "(data.val_fraction, data.test_fraction), so putting the validation split back would change the test split. "
        "Refit on the training split alone with --no-trainval, or use a dataset with a fixed test split (data=pets)."
    )


def run_refit(overrides: Sequence[str], refit_dir: Path) -> None:
    """Run the refit multirun ``overrides`` into ``refit_dir`` (which must not hold runs yet)."""
    if refit_dir.is_dir() and any(refit_dir.iterdir()):
        raise ConfigError(f"{refit_dir} exists already: its table is `python -m tlresearch.table {refit_dir}`; "
                          "move it away to refit again.")
    launch(["-m", *overrides, f"hydra.sweep.dir={refit_dir}"], "refit")


def launch(args: Sequence[str], step: str) -> None:
    """``python -m tlresearch.train <args>`` in a subprocess; all its output goes to stderr (stdout is the table's)."""
    command = [sys.executable, "-m", TRAIN, *args]
    print(f"\n[{step}] python -m {TRAIN} {shlex.join(args)}", file=sys.stderr, flush=True)
    code = subprocess.run(command, check=False, stdout=STDERR_FD).returncode
    if code != 0:
        raise ConfigError(f"the {step} stopped (`python -m {TRAIN}` exited with status {code}); its message is above.")


def _checked_extra(search: Search, extra: Sequence[str]) -> list[str]:
    """The overrides given for the refit, without those that repeat the search's own command line."""
    parser = OverridesParser.create()
    own = {_normal(parser.parse_override(o)) for o in search.overrides}
    out = []
    for text in extra:
        override = parser.parse_override(text)
        key = override.key_or_group
        if _normal(override) in own or key.startswith(SWEEPER_KEYS):
            continue  # the search's own setting (the same command line given again), or its sweeper's
        if key == SEARCH_KEY:
            raise ConfigError(f"{text} is invalid: {search.path} is a search of {SEARCH_KEY}={search.name}; refit it as it is, "
                              "or run the other search in a new directory.")
        if key == SEED:
            raise ConfigError(f"{text} is invalid: the refit runs seeds 0..N-1 (N = --seeds); leave the seed out of the overrides.")
        if key in search.best_params:
            chosen = _override_value(search.best_params[key])
            raise ConfigError(f"{text} is invalid: {key} is what the search chose ({key}={chosen}); the refit trains that value.")
        out.append(text)
    return out


def _normal(override) -> tuple[str, str | None]:
    """An override in a comparable form: its key element (``+experiment``) and its value as text."""
    value = None if override.is_delete() and override.value() is None else override.get_value_element_as_str()
    return override.get_key_element(), value


def _override_value(value: Any) -> str:
    """A best value as a command-line value: Optuna gives Python scalars (``None``, ``True``, floats)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
