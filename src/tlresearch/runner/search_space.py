"""A hyper-parameter search searches exactly the space its config declares, nothing else.

Hydra merges every ``hydra.sweeper.params`` of the defaults list into one mapping, and an
experiment (``+experiment=<name>``, appended after ``hparams_search``) brings its grid
(backbone, finetune, seed…): under the Optuna sweeper that grid would join the search space,
and the "best" setting would include the luck of a seed. A config of ``conf/hparams_search/``
therefore declares its space on :class:`DeclaredSearchSpace`, a Hydra callback that runs once,
in the launching process, before the sweeper is built (``on_multirun_start``), and:

* makes ``hydra.sweeper.params`` exactly the declared space (:func:`exact_space`);
* drops the experiment's ``seed`` axis: every trial runs at the config's ``seed`` (0 unless
  ``seed=<n>``); the seeds are for the refit (``python -m tlresearch.study``);
* refuses every other axis of the grid unless the command line fixes it (``backbone=resnet50``):
  a search runs one cell of an experiment's grid ("pick one"; one search per cell);
* refuses a command-line sweep of a key outside the space (``seed=0,1``, ``backbone=a,b``);
* refuses a search with nothing to maximise (``optimized_metric`` null: a config without a
  validation split) and a space that declares the seed.

A mistake exits with status 2 and a one-paragraph message before any trial runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from tlresearch.core.config import require
from tlresearch.core.errors import ConfigError
from tlresearch.runner.entry import exit_on_config_error

log = logging.getLogger("tlresearch.search")

SEED = "seed"


class DeclaredSearchSpace(Callback):
    """The Hydra callback of a search config: ``hydra.callbacks.search_space`` (see the module docstring).

    Args:
        space: the search space, ``{config key: Optuna sweeper syntax}``, e.g.
            ``{"optimizer.lr": "tag(log, interval(1e-4, 1e-1))"}``.
    """

    def __init__(self, space: Mapping[str, Any]) -> None:
        self.space = {str(k): str(v) for k, v in dict(space).items()}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            space = apply_declared_space(config, self.space)
        except ConfigError as exc:
            exit_on_config_error(exc)
        log.info("search space (%s): %s; every trial runs at seed=%s", search_name(config), ", ".join(space), config.get(SEED))


def apply_declared_space(config: DictConfig, declared: Mapping[str, str]) -> dict[str, str]:
    """Check a search's composed config (``hydra`` node included) and set its
    ``hydra.sweeper.params`` to exactly ``declared``; return that space."""
    name = search_name(config)
    task = [str(o) for o in config.hydra.overrides.task]
    space = exact_space(declared, config.hydra.sweeper.get("params"), task, name)
    metric = config.get("optimized_metric")
    require(bool(metric), "optimized_metric", metric,
            f"hparams_search={name} maximises a validation metric, and this config names none (an experiment without "
            "a validation split sets it to null); search a config with a validation split, e.g. optimized_metric="
            "val/best_mean_class_acc with data.val_per_class=20.")
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweeper.params = OmegaConf.create(space)
    return space


def exact_space(declared: Mapping[str, str], params: Mapping[str, Any] | None, task_overrides: Sequence[str],
                search: str) -> dict[str, str]:
    """The search space of a search config: exactly ``declared``, after checking what else would be searched.

    Args:
        declared: the search config's space.
        params: the merged ``hydra.sweeper.params`` (the declared space plus any experiment's grid).
        task_overrides: the command line (``hydra.overrides.task``).
        search: the search config's name, for messages.

    Raises:
        ConfigError: the space declares the seed; the command line sweeps a key outside the space;
            an axis of the grid other than the seed is not fixed on the command line.
    """
    if SEED in declared:
        raise ConfigError(f"hydra.callbacks.search_space.space.seed={declared[SEED]!r} is invalid: the seed is never "
                          f"searched (a best seed is luck, not a setting); remove it from conf/hparams_search/{search}.yaml.")
    parser = OverridesParser.create()
    overrides = parser.parse_overrides(list(task_overrides))
    swept = [o for o in overrides if o.is_sweep_override() and o.key_or_group not in declared]
    fixed = {o.key_or_group for o in overrides if not o.is_sweep_override()}
    grid = {str(k): str(v) for k, v in (params or {}).items() if k not in declared and k != SEED}
    unfixed = [parser.parse_override(f"{k}={v}") for k, v in grid.items() if k not in fixed]
    if swept or unfixed:
        axes = " ".join(str(o.input_line) for o in swept + unfixed)
        picks = " ".join(f"{o.key_or_group}={_first_value(o)}" for o in swept + unfixed)
        raise ConfigError(
            f"{axes} is invalid under hparams_search={search}: a search searches exactly its declared space "
            f"({', '.join(declared)}), at one seed, and never an axis of a grid (the command line's or an experiment's "
            "hydra.sweeper.params). Pick one value on the command line: "
            f"{picks} (one search per cell of a grid; `python -m tlresearch.study` refits the best setting with several seeds)."
        )
    return dict(declared)


def search_name(config: DictConfig) -> str:
    """The ``hparams_search`` option of a composed config (``lr_wd``), or ``?`` when unknown."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    return str(choices.get("hparams_search") or "?")


def _first_value(override: Override) -> str:
    """The first value of a sweep (``a`` of ``a,b,c``), or a placeholder for an interval."""
    if override.is_discrete_sweep():
        return next(iter(override.sweep_string_iterator()))
    return "<one value>"
