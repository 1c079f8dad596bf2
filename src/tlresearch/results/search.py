"""Reading a finished hyper-parameter search: its best setting and what it was searched with.

A search (``python -m tlresearch.train hparams_search=<name> …``) is a sweep directory holding
one run directory per trial and Optuna's ``optimization_results.yaml`` (``best_params``,
``best_value``). Every trial's ``.hydra/overrides.yaml`` is the search's command line plus that
trial's point of the space; :func:`read_search` splits the two, so a refit can train the best
point with exactly the settings that were searched (``python -m tlresearch.study``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from tlresearch.core.errors import ConfigError
from tlresearch.results.records import Run, is_run_dir, load_run

RESULTS_FILE = "optimization_results.yaml"


@dataclass(frozen=True)
class Search:
    """A finished search, read from its sweep directory.

    Attributes:
        path: the sweep directory.
        name: the ``hparams_search`` option it ran (``lr_wd``).
        best_params: the best point, ``{config key: value}``.
        best_value: its ``optimized_metric`` (e.g. the best validation mean per-class accuracy).
        metric: the name of that metric.
        trials: the trials' run directories, in job order.
        overrides: the command line every trial shares (the search's), in order.
        best_trial: the trial that scored ``best_value``, when found.
    """

    path: Path
    name: str
    best_params: dict[str, Any]
    best_value: float
    metric: str
    trials: tuple[Run, ...]
    overrides: tuple[str, ...]
    best_trial: Run | None


def read_search(path: str | os.PathLike) -> Search:
    """Read the search in sweep directory ``path``.

    Raises:
        ConfigError: ``path`` holds no finished single-objective search, or no trial.
    """
    path = Path(path)
    results = _load(path / RESULTS_FILE)
    if not isinstance(results, dict) or "best_params" not in results:
        what = "a multi-objective search (no single best setting)" if isinstance(results, dict) else "no finished search"
        raise ConfigError(f"{path} holds {what}: pass the sweep directory of a finished `hparams_search=<name>` run, "
                          f"the one with {RESULTS_FILE}.")
    trials = tuple(load_run(p, sweep_dir=path) for p in sorted(path.iterdir(), key=_job_order) if is_run_dir(p))
    if not trials:
        raise ConfigError(f"{path} has {RESULTS_FILE} but no trial directories (0/, 1/, …): pass the search's own sweep directory.")
    best = {str(k): v for k, v in (results.get("best_params") or {}).items()}
    shared = _shared_overrides(trials, set(best))
    name = str(trials[0].choices.get("hparams_search") or "")
    metric = str(trials[0].config.get("optimized_metric") or "")
    return Search(path=path, name=name, best_params=best, best_value=float(results["best_value"]), metric=metric,
                  trials=trials, overrides=shared, best_trial=_trial_of(trials, best))


def override_key(text: str) -> str:
    """The config key an override sets, without ``+``/``++``/``~`` (``+experiment=x`` -> ``experiment``)."""
    return OverridesParser.create().parse_override(text).key_or_group


def _shared_overrides(trials: tuple[Run, ...], searched: set[str]) -> tuple[str, ...]:
    """The trials' overrides outside the searched keys; they must be the same for every trial."""
    shared = [tuple(o for o in trial.overrides if override_key(o) not in searched) for trial in trials]
    if len(set(shared)) > 1:
        raise ConfigError(f"{trials[0].sweep_dir}: the trials were run with different settings ({' | '.join(map(' '.join, set(shared)))}); "
                          "a search directory must hold the trials of one search only.")
    return shared[0]


def _trial_of(trials: tuple[Run, ...], best: dict[str, Any]) -> Run | None:
    """The trial whose searched values are ``best``, if any (Optuna writes them verbatim)."""
    for trial in trials:
        values = {override_key(o): yaml.safe_load(o.split("=", 1)[1]) for o in trial.overrides if "=" in o}
        if all(values.get(k) == v for k, v in best.items()):
            return trial
    return None


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def _load(path: Path) -> Any:
    if not path.is_file():
        return None
    with open(path) as fh:
        return yaml.safe_load(fh)
