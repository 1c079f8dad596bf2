"""Which runs share a table cell: the row and column keys, and the labels they give each run.

A *key* is a dotted config path (``optimizer.lr``), a config group (``backbone``) or a
metric, resolved per run by :meth:`~tlresearch.results.records.Run.value`; a run's *label* is
its values for the row (or column) keys. Without ``--rows`` the rows are the keys that vary
across runs, seeds excluded (:func:`default_row_keys`); runs that differ in an override but
land in one cell are reported (:func:`mixed_cell_warnings`), never silently averaged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tlresearch.core.config import is_number
from tlresearch.core.errors import ConfigError, suggest
from tlresearch.results.config_tree import config_keys, config_leaves
from tlresearch.results.records import NOT_METRIC_KEYS, Run

Label = tuple[Any, ...]


def check_key(runs: Sequence[Run], key: str, option: str = "--rows") -> None:
    """Raise ConfigError when no run resolves ``key`` (config path, config group or metric)."""
    if any(run.has(key) for run in runs):
        return
    known: dict[str, None] = {}
    for run in runs:
        known.update(dict.fromkeys(config_keys(run.config)))
        known.update(dict.fromkeys(g for g in run.choices if not g.startswith("hydra/")))
        known.update(dict.fromkeys(k for k in (run.metrics or {}) if k not in NOT_METRIC_KEYS))
    groups = sorted({g for r in runs for g in r.choices if not g.startswith("hydra/")})
    raise ConfigError(
        f"unknown {option} key {key!r}: it is not a config key, config group or metric of any of the "
        f"{len(runs)} runs.{suggest(key, known)} Use a dotted config path (e.g. optimizer.lr) or a config group"
        f"{' (' + ', '.join(groups) + ')' if groups else ''}."
    )


def default_row_keys(runs: Sequence[Run], exclude: Sequence[str] = ()) -> list[str]:
    """The keys whose values differ between runs, seeds excluded, in a stable order.

    First the command-line overrides (what a sweep varied, in the order given); when none
    varies, the config groups chosen; then the config leaves (a varying ``X.name`` stands for
    all of ``X``). Keys in ``exclude`` (the column keys) are left out.
    """
    def varies(key: str) -> bool:
        return len({_hashable(_safe_value(r, key)) for r in runs}) > 1

    def keep(key: str) -> bool:
        return key not in exclude and not _is_seed(key) and not key.startswith("hydra") and varies(key)

    candidates = list(dict.fromkeys(k for r in runs for k in r.override_dict))
    keys = [k for k in candidates if keep(k)]
    if keys:
        return keys
    groups = list(dict.fromkeys(g for r in runs for g in r.choices if not g.startswith("hydra/")))
    keys = [g for g in groups if keep(g)]
    if keys:
        return keys
    return [k for k in _varying_leaf_keys(runs) if keep(k)]


def _varying_leaf_keys(runs: Sequence[Run]) -> list[str]:
    leaves = [config_leaves(r.config) for r in runs if r.exists]
    all_keys = list(dict.fromkeys(k for leaf in leaves for k in leaf))
    varying = []
    for key in all_keys:
        values = [leaf.get(key) for leaf in leaves]
        if any(isinstance(v, str) and ("/" in v or "${" in v) for v in values):
            continue  # paths and unresolved interpolations differ per run without meaning anything
        if len({_hashable(v) for v in values}) > 1:
            varying.append(key)
    named = {k.rsplit(".", 1)[0] for k in varying if k.endswith(".name") and "." in k}
    return list(dict.fromkeys(
        next((n for n in named if k == f"{n}.name" or k.startswith(f"{n}.")), k) for k in varying
    ))


def label_of(run: Run, keys: Sequence[str]) -> Label:
    """The row (or column) label of ``run``: its values for ``keys`` (None where unresolved)."""
    return tuple(_hashable(_safe_value(run, k)) for k in keys)


def format_label(value: Any) -> str:
    """How a label value is printed: ``0.001``, ``resnet50``, ``true``, ``n/a`` for None."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def label_text(keys: Sequence[str], label: Label) -> str:
    """A label as shown in headers and messages: ``backbone=resnet50, finetune=full``."""
    return ", ".join(f"{k}={format_label(v)}" for k, v in zip(keys, label))


def _safe_value(run: Run, key: str) -> Any:
    try:
        return run.value(key)
    except KeyError:
        return None


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _is_seed(key: str) -> bool:
    return key.rsplit(".", 1)[-1].endswith("seed")


def label_sort_key(label: Label) -> tuple[Any, ...]:
    """Sort key of labels: numbers in numeric order, then text, then unresolved (None) values."""
    def one(v: Any) -> tuple[Any, ...]:
        if v is None:
            return (2, 0, "")
        if is_number(v):
            return (0, v, "")
        return (1, 0, str(v))
    return tuple(one(v) for v in label)


def mixed_cell_warnings(cells: Iterable[Any], grouped_keys: Sequence[str]) -> list[str]:
    """Warn when runs averaged into one cell differ in an override other than the seed.

    ``cells`` are the table's :class:`~tlresearch.results.aggregate.Cell` s; only their ``runs``
    are read.

    Averaging runs with different learning rates is a silent error in a paper table; the fix
    is to add the key to ``--rows`` or ``--cols``.
    """
    spread: dict[str, set[Any]] = {}
    for cell in cells:
        if len(cell.runs) < 2:
            continue
        keys = {k for r in cell.runs for k in r.override_dict}
        for key in keys:
            if key in grouped_keys or _is_seed(key) or key.startswith("hydra"):
                continue
            # Compare resolved values: "optimizer.lr=0.01" in one run and the 0.01 default in
            # another are the same setting.
            values = {_hashable(_safe_value(r, key)) for r in cell.runs}
            if len(values) > 1:
                spread.setdefault(key, set()).update(format_label(v) for v in values)
    return [
        f"runs averaged into the same cell differ in {key!r} (values: "
        f"{', '.join(sorted(str(v) for v in values))}); add it to --rows or --cols to separate them."
        for key, values in spread.items()
    ]


