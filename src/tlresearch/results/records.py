"""Reading run directories: what each training run was (its config) and what it gave (its metrics).

A *run directory* is Hydra's output dir of one job: it holds ``.hydra/config.yaml`` (the task
config as Hydra saved it: interpolations are not resolved), ``.hydra/hydra.yaml`` (with
``hydra.runtime.choices``: the option picked in each config group), ``.hydra/overrides.yaml``
(the command-line overrides of this job) and, once the run has ended, ``metrics.json``.
Only directories with a ``.hydra/`` folder count as runs: a stray ``metrics.json`` copied
elsewhere (e.g. into ``experiments/``) is not a run and would have no config to group by.

A *sweep directory* (``multirun/DATE/TIME/``) holds ``multirun.yaml`` and one run directory
per job. Its ``hydra.overrides.task`` (plus ``hydra.sweeper.params``) describes the grid the
basic sweeper expanded; a combination with no run directory at all (the sweep was killed, a
node died before Hydra wrote ``.hydra/``) becomes a placeholder :class:`Run` with status
``"missing"`` and ``exists=False``, so a table can never silently drop it.

Everything here reads files only; nothing re-parses logs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from tlresearch.core.errors import ConfigError
from tlresearch.results.config_tree import MISSING, get_path, resolve_config, set_path, split_override

Status = Literal["completed", "failed", "interrupted", "missing"]
STATUSES: tuple[str, ...] = ("completed", "failed", "interrupted", "missing")

HYDRA_DIR = ".hydra"
METRICS_FILE = "metrics.json"
MULTIRUN_FILE = "multirun.yaml"
# The sweeper whose grid we can reproduce; other sweepers (Optuna, …) choose points adaptively.
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
#: Fields of ``metrics.json`` that are not metrics: the run's status and a failed run's error.
NOT_METRIC_KEYS = frozenset({"status", "error"})


@dataclass
class Run:
    """One training run, read from its run directory.

    Attributes:
        path: the run directory (for a placeholder: where the sweep would have put it).
        config: the task config, interpolations resolved where possible.
        choices: ``hydra.runtime.choices`` (config group -> option), e.g. ``{"backbone": "resnet50"}``.
        overrides: the job's command-line overrides, e.g. ``["backbone=vgg16", "seed=1"]``.
        metrics: the content of ``metrics.json``, or None when there is none.
        status: ``"completed"``, ``"failed"``, ``"interrupted"`` or ``"missing"`` (no metrics.json,
            or no run directory at all).
        sweep_dir: the sweep directory this run belongs to, if any.
        job_num: Hydra's job number within its sweep (``hydra.job.num``), if known.
        exists: False for a placeholder: a sweep combination with no run directory at all.
    """

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    status: Status = "missing"
    sweep_dir: Path | None = None
    job_num: int | None = None
    exists: bool = True

    @property
    def error(self) -> str | None:
        """The error message a failed run recorded in metrics.json, if any."""
        if self.metrics and self.metrics.get("error"):
            return str(self.metrics["error"])
        return None

    @property
    def override_dict(self) -> dict[str, str | None]:
        """The overrides as ``{key: value-string}``, keys without ``+``/``++``/``~`` or ``@package``."""
        return dict(split_override(o) for o in self.overrides)

    def value(self, key: str) -> Any:
        """Resolve a table key for this run.

        In order: a dotted config path (``optimizer.lr``); when that node is a mapping with a
        ``name`` field, its name (``backbone`` -> ``cfg.backbone.name``); else the Hydra choice
        of that config group (``experiment`` -> ``"my_study"``); else a metrics key
        (``test/acc``). Raises KeyError when none of these exists.
        """
        node = get_path(self.config, key)
        if node is not MISSING and not isinstance(node, Mapping):
            return node
        if isinstance(node, Mapping) and "name" in node:
            return node["name"]
        for group in (key, key.replace(".", "/")):
            if group in self.choices:
                return self.choices[group]
        if self.metrics is not None and key in self.metrics:
            return self.metrics[key]
        raise KeyError(key)

    def has(self, key: str) -> bool:
        """Whether :meth:`value` resolves ``key`` for this run."""
        try:
            self.value(key)
        except KeyError:
            return False
        return True

    def describe(self) -> str:
        """A short human-readable line: path and status (with the error of a failed run)."""
        where = str(self.path)
        if not self.exists:
            expected = " ".join(self.overrides)
            return f"{where} (missing: no run directory; expected by {MULTIRUN_FILE}: {expected})"
        if self.status == "missing":
            return f"{where} (missing: no {METRICS_FILE})"
        if self.error:
            return f"{where} ({self.status}: {self.error})"
        return f"{where} ({self.status})"


# ----------------------------------------------------------------------------- finding runs


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Find every run under ``paths``, plus placeholders for sweep combinations with no directory.

    A path may be a single run directory, a sweep directory (``multirun/DATE/TIME/``) or any
    parent folder, which is walked. Runs are returned once each (a run reachable from two of
    the paths is not counted twice), sorted by path with numbers in natural order.

    Raises:
        ConfigError: a path does not exist.
    """
    runs: dict[Path, Run] = {}
    sweeps: dict[Path, None] = {}  # an ordered set
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise ConfigError(f"{root} does not exist: pass run directories, sweep directories "
                              "or a folder holding them.")
        for kind, path, sweep_dir in _walk(root.resolve()):
            if kind == "sweep":
                sweeps[path] = None
            elif path not in runs:
                runs[path] = load_run(path, sweep_dir=sweep_dir)
            elif runs[path].sweep_dir is None:  # first reached alone, now through its sweep
                runs[path].sweep_dir = sweep_dir
    found = list(runs.values())
    for sweep_dir in sweeps:
        members = [r for r in found if r.sweep_dir == sweep_dir]
        found.extend(expected_missing_runs(sweep_dir, members))
    return sorted(found, key=lambda r: _natural_key(str(r.path)))


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory (it holds Hydra's ``.hydra/`` folder)."""
    return (path / HYDRA_DIR).is_dir()


def _walk(root: Path) -> Iterator[tuple[str, Path, Path | None]]:
    """Yield ``("run", run_dir, its sweep_dir or None)`` per run and ``("sweep", sweep_dir, None)``.

    Does not descend into run directories (their checkpoints and logs hold no runs) nor into
    hidden folders.
    """
    if root.is_file():
        root = root.parent  # e.g. a metrics.json or multirun.yaml passed by shell glob
    sweep_stack: list[Path] = []  # the sweep directories above the current folder
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        while sweep_stack and sweep_stack[-1] != here and sweep_stack[-1] not in here.parents:
            sweep_stack.pop()
        if MULTIRUN_FILE in filenames:
            sweep_stack.append(here)
            yield "sweep", here, None
        if HYDRA_DIR in dirnames and (here / HYDRA_DIR).is_dir():
            dirnames[:] = []
            yield "run", here, next((s for s in reversed(sweep_stack) if s != here), None)
            continue
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)


def load_run(path: str | os.PathLike, sweep_dir: Path | None = None) -> Run:
    """Read one run directory (see the module docstring for what it holds)."""
    path = Path(path)
    hydra_dir = path / HYDRA_DIR
    config = resolve_config(_load_yaml(hydra_dir / "config.yaml") or {})
    hydra_cfg = (_load_yaml(hydra_dir / "hydra.yaml") or {}).get("hydra") or {}
    choices = dict((hydra_cfg.get("runtime") or {}).get("choices") or {})
    overrides = _load_yaml(hydra_dir / "overrides.yaml")
    if overrides is None:
        overrides = (hydra_cfg.get("overrides") or {}).get("task") or []
    job_num = (hydra_cfg.get("job") or {}).get("num")
    metrics, status = _load_metrics(path / METRICS_FILE)
    return Run(
        path=path,
        config=config,
        choices=choices,
        overrides=[str(o) for o in overrides],
        metrics=metrics,
        status=status,
        sweep_dir=sweep_dir,
        job_num=job_num if isinstance(job_num, int) else None,
    )


def _load_metrics(path: Path) -> tuple[dict[str, Any] | None, str]:
    """Return ``(metrics, status)``; status comes from the file's ``status`` field.

    No file -> ``"missing"`` (the job never finished: killed, out of memory, still running).
    A file without ``status`` -> ``"completed"``. An unreadable file, or a status we do not
    know, counts as ``"failed"`` so that it is shown, never averaged in.
    """
    if not path.is_file():
        return None, "missing"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"status": "failed", "error": f"unreadable {METRICS_FILE}: {exc}"}, "failed"
    if not isinstance(metrics, dict):
        return {"status": "failed", "error": f"{METRICS_FILE} is not a JSON object"}, "failed"
    status = metrics.get("status", "completed")
    return metrics, status if status in ("completed", "failed", "interrupted") else "failed"


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as fh:
        return yaml.load(fh, Loader=loader)


# ----------------------------------------------------------------------------- sweep grids


def expected_missing_runs(sweep_dir: Path, members: list[Run]) -> list[Run]:
    """Placeholders for the combinations of ``sweep_dir``'s grid that have no run directory.

    The grid is what Hydra's basic sweeper expands from ``hydra.sweeper.params`` and
    ``hydra.overrides.task`` in ``multirun.yaml``; a job matches a combination when its
    overrides are exactly that combination's (the sweeper writes them verbatim). Sweeps made
    by other sweepers (Optuna, …) have no fixed grid and get no placeholders.
    """
    multirun = _load_yaml(sweep_dir / MULTIRUN_FILE) or {}
    hydra_cfg = multirun.get("hydra") or {}
    sweeper = hydra_cfg.get("sweeper") or {}
    if sweeper.get("_target_", _BASIC_SWEEPER) != _BASIC_SWEEPER:
        return []
    task = [str(o) for o in ((hydra_cfg.get("overrides") or {}).get("task") or [])]
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        combos = expand_grid(params + task)
    except Exception as exc:  # noqa: BLE001 - a syntax we cannot expand: say so rather than guess
        warnings.warn(f"{sweep_dir / MULTIRUN_FILE}: cannot expand the sweep grid ({exc}); "
                      "missing jobs of this sweep will not be reported.", stacklevel=2)
        return []
    present = {frozenset(r.overrides) for r in members}
    base_config = {k: v for k, v in multirun.items() if k != "hydra"}
    base_choices = dict((hydra_cfg.get("runtime") or {}).get("choices") or {})
    placeholders = []
    for num, combo in enumerate(combos):
        if frozenset(combo) in present:
            continue
        config, choices = _config_for_combo(base_config, base_choices, combo, members)
        placeholders.append(Run(path=sweep_dir / str(num), config=config, choices=choices,
                                overrides=list(combo), metrics=None, status="missing",
                                sweep_dir=sweep_dir, job_num=num, exists=False))
    return placeholders


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for ``overrides``, each a list of override strings."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for job in batch]


def _config_for_combo(base_config: dict[str, Any], base_choices: dict[str, Any], combo: list[str],
                      members: list[Run]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rebuild what a missing job's config would have been, as far as a table needs it.

    Value overrides (``optimizer.lr=0.1``) are applied to the sweep's base config. A config
    group override (``backbone=vgg16``) cannot be composed without the config sources, so the
    group node is borrowed from a sibling job that chose the same option, or else dropped (then
    :meth:`Run.value` falls back to the choice itself).
    """
    parser = OverridesParser.create()
    config = copy.deepcopy(base_config)
    choices = dict(base_choices)
    parsed = [parser.parse_override(text) for text in combo]
    is_group = [o.key_or_group in choices or any(o.key_or_group in r.choices for r in members) for o in parsed]
    # Groups first, as Hydra composes them before applying value overrides on top.
    for override, group in sorted(zip(parsed, is_group), key=lambda pair: not pair[1]):
        key = override.key_or_group
        if group:
            value = override.value()
            choices[key] = value
            sibling = next((r for r in members if r.choices.get(key) == value and r.exists), None)
            node = get_path(sibling.config, key) if sibling else MISSING
            set_path(config, key, copy.deepcopy(node) if node is not MISSING else MISSING)
        elif override.is_delete():
            set_path(config, key, MISSING)
        else:
            set_path(config, key, override.value())
    return resolve_config(config), choices


# ----------------------------------------------------------------------------- small helpers


def _natural_key(text: str) -> list[Any]:
    """Sort key that puts ``job/2`` before ``job/10``."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", text) if tok]
