"""Checks of top-level training settings that no constructor checks by itself.

Lightning's Trainer accepts ``max_epochs="abc"`` or ``accumulate_grad_batches=0`` and fails
later, deep inside fit, with a TypeError or a ZeroDivisionError; a monitored metric nobody logs
fails after the first epoch. These checks run before any work, and raise a
:class:`~tlresearch.errors.ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tlresearch.errors import ConfigError, suggest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(minimum: int, optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or (_is_int(v) and v >= minimum)


#: trainer.<key> -> (valid?, what is allowed). Only keys whose bad values Lightning does not
#: reject itself when the Trainer is built.
TRAINER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_epochs": (lambda v: v is None or (_is_int(v) and v >= -1), "an integer >= 0 (-1: no limit) or null"),
    "min_epochs": (_int_at_least(0, optional=True), "an integer >= 0 or null"),
    "max_steps": (lambda v: _is_int(v) and v >= -1, "an integer >= 1 (-1: no limit)"),
    "accumulate_grad_batches": (_int_at_least(1), "an integer >= 1"),
    "log_every_n_steps": (_int_at_least(1, optional=True), "an integer >= 1"),
    "check_val_every_n_epoch": (_int_at_least(1, optional=True), "an integer >= 1 or null"),
    "num_sanity_val_steps": (lambda v: v is None or (_is_int(v) and v >= -1), "an integer >= 0 (-1: all batches)"),
    "deterministic": (lambda v: v in (True, False, None, "warn"), "true, false or warn"),
    "enable_progress_bar": (lambda v: isinstance(v, bool) or v is None, "true or false"),
}


def check_seed(seed: Any) -> int:
    """``seed`` must be an integer that numpy and torch accept (0 <= seed < 2**32)."""
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is invalid: use an integer in [0, 2**32), e.g. seed=0.")
    return int(seed)


def check_trainer_settings(trainer_cfg: Mapping[str, Any]) -> None:
    """Check the ``trainer.*`` values of :data:`TRAINER_RULES`."""
    for key, (valid, allowed) in TRAINER_RULES.items():
        if key in trainer_cfg and not valid(trainer_cfg[key]):
            raise ConfigError(f"trainer.{key}={trainer_cfg[key]!r} is invalid: use {allowed}.")


def check_bool(key: str, value: Any) -> bool:
    """``value`` must be true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is invalid: use true or false.")
    return value


def check_known_keys(key: str, given: Iterable[str], accepted_by: Callable[..., Any], exclude: Iterable[str] = ()) -> None:
    """Every key of ``given`` must be a keyword argument of ``accepted_by`` (``exclude``: set by the code, not the config)."""
    names = [n for n in inspect.signature(accepted_by).parameters if n not in {"self", *exclude}]
    for name in given:
        if name not in names:
            raise ConfigError(f"{key}.{name} is not a known key (allowed: {', '.join(names)}).{suggest(name, names)}")


def check_monitors(callbacks: Mapping[str, Any], logged: Iterable[str], key: str = "callbacks") -> None:
    """Every callback with a ``monitor`` (checkpointing, early stopping) must watch a metric that is logged."""
    logged = sorted(set(logged))
    for name, callback in callbacks.items():
        monitor = getattr(callback, "monitor", None)
        if monitor is not None and monitor not in logged:
            raise ConfigError(
                f"{key}.{name}.monitor={monitor!r} is not a metric this model logs: use one of {', '.join(logged)}."
                f"{suggest(monitor, logged)}"
            )


def check_argument_types(key: str, target: Callable[..., Any], values: Mapping[str, Any]) -> None:
    """Each of ``values`` must be of the kind of ``target``'s default for it: a number where the
    default is a number, true/false where it is a bool (``optimizer.momentum=abc`` is caught here,
    naming the key, instead of failing inside torch with an anonymous TypeError)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to compare with
        return
    for name, value in values.items():
        param = params.get(name)
        if param is None or param.default is inspect.Parameter.empty:
            continue
        default = param.default
        if isinstance(default, bool):
            valid, allowed = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            valid, allowed = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not valid:
            raise ConfigError(f"{key}.{name}={value!r} is invalid: use {allowed} (the default is {default!r}).")
