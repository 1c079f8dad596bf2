"""Config validation: the ground floor every layer uses.

One place for every check of a user's settings, so that each kind of mistake gets one message:
``<key>=<value> is invalid: <the fix>``, naming the full config key, the bad value and what to
use instead (with close-name suggestions for misspelt choices and keys).

* scalar checks: :func:`check_bool`, :func:`check_int`, :func:`check_positive`, :func:`check_choice`,
  :func:`require`, :func:`parse_amount`, :func:`check_module_prefixes`;
* typed settings: :func:`from_node` builds a frozen dataclass from a config node, rejecting
  unknown keys, and lets the class validate its values (``validate(key)``);
* checks of settings that Lightning or torch would reject late or not at all:
  :func:`check_seed`, :func:`check_trainer_settings`, :func:`check_known_keys`,
  :func:`check_monitors`, :func:`check_argument_types`.

Lightning's Trainer accepts ``max_epochs="abc"`` or ``accumulate_grad_batches=0`` and fails
later, deep inside fit, with a TypeError or a ZeroDivisionError; a monitored metric nobody logs
fails after the first epoch. These checks run before any work, and raise a
:class:`~tlresearch.core.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from tlresearch.core.errors import ConfigError, suggest

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    """True for an integer that is not a bool (YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for an int or a float that is not a bool (a metric, a fraction, a rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(ok: bool, key: str, value: Any, fix: str) -> None:
    """Raise ``ConfigError("key=value is invalid: fix")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


def check_bool(key: str, value: Any) -> bool:
    """``value`` must be true or false."""
    require(isinstance(value, bool), key, value, "use true or false.")
    return value


def check_int(key: str, value: Any, *, minimum: int | None = None, optional: bool = False, fix: str = "") -> int | None:
    """``value`` must be an integer (``>= minimum`` when given); ``None`` passes when ``optional``."""
    if optional and value is None:
        return None
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = "an integer" if minimum is None else f"an integer >= {minimum}"
        require(False, key, value, fix or f"use {bound}{' or null' if optional else ''}.")
    return int(value)


def check_positive(key: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` must be a number > 0 (an int or a float, not a bool); ``None`` passes when ``optional``."""
    if optional and value is None:
        return None
    require(is_number(value) and value > 0, key, value, f"use a number > 0{' or null' if optional else ''}.")
    return float(value)


def check_choice(key: str, value: Any, choices: Sequence[str]) -> Any:
    """``value`` if it is one of ``choices``, else a ConfigError naming ``key`` (with suggestions)."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is invalid: use one of {list(choices)}.{suggest(str(value), choices)}")
    return value


def check_module_prefixes(key: str, value: Any) -> tuple[str, ...]:
    """A list of dotted module names (``[my_pkg, lab.models]``), e.g. the packages a user trusts."""
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else None
    ok = items is not None and all(isinstance(v, str) and all(p.isidentifier() for p in v.split(".")) for v in items)
    require(ok, key, value, "use a list of module names, e.g. [my_pkg] (or [] for none).")
    return tuple(items or ())


def parse_amount(value: Any, key: str) -> float:
    """A number given as a float, an int or a fraction string such as ``"4/255"`` (pixel units)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is invalid: give a number such as 0.03 or a fraction such as 8/255.")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{key}={value!r} is not a number: give e.g. 0.03 or a fraction such as 8/255.") from None


# --------------------------------------------------------------------------------------------
# Typed settings from config nodes
# --------------------------------------------------------------------------------------------


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); other values unchanged."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def from_node(cls: type[T], node: Any, key: str, **overrides: Any) -> T:
    """Build the settings dataclass ``cls`` from ``node`` (keys under ``key``), then validate it.

    ``node`` may be ``None`` (the defaults), an instance of ``cls`` (returned as it is) or a
    mapping. Unknown keys raise a ConfigError (a typo must not silently fall back to a
    default); lists become tuples where the field is a tuple; nested settings dataclasses are
    built recursively; ``overrides`` win over ``node``. ``obj.validate(key)`` runs when the
    class defines it.
    """
    node = plain(node)
    if isinstance(node, cls) and not overrides:
        return node
    if node is not None and not isinstance(node, Mapping):
        names = ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        raise ConfigError(f"{key}={node!r} is invalid: give a mapping of the settings {names}.")
    values = dict(node or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in values:
        if name not in fields:
            raise ConfigError(f"`{key}.{name}` is not a setting; the settings of `{key}` are {sorted(fields)}.{suggest(name, fields)}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and not dataclasses.is_dataclass(value):
            values[name] = from_node(hint, value, f"{key}.{name}")
        elif isinstance(value, list) and _is_tuple_hint(hint):
            values[name] = tuple(value)
    values.update(overrides)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)
    return obj


def _is_tuple_hint(hint: Any) -> bool:
    """``tuple[...]``, or a union (``tuple[...] | None``) with a tuple in it."""
    if hint is tuple or typing.get_origin(hint) is tuple:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and any(map(_is_tuple_hint, typing.get_args(hint)))


# --------------------------------------------------------------------------------------------
# Settings of other libraries (Lightning's Trainer, torch optimizers, callbacks)
# --------------------------------------------------------------------------------------------


def _int_at_least(minimum: int, optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or (is_int(v) and v >= minimum)


#: trainer.<key> -> (valid?, what is allowed). Only keys whose bad values Lightning does not
#: reject itself when the Trainer is built.
TRAINER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_epochs": (lambda v: v is None or (is_int(v) and v >= -1), "an integer >= 0 (-1: no limit) or null"),
    "min_epochs": (_int_at_least(0, optional=True), "an integer >= 0 or null"),
    "max_steps": (lambda v: is_int(v) and v >= -1, "an integer >= 1 (-1: no limit)"),
    "accumulate_grad_batches": (_int_at_least(1), "an integer >= 1"),
    "log_every_n_steps": (_int_at_least(1, optional=True), "an integer >= 1"),
    "check_val_every_n_epoch": (_int_at_least(1, optional=True), "an integer >= 1 or null"),
    "num_sanity_val_steps": (lambda v: v is None or (is_int(v) and v >= -1), "an integer >= 0 (-1: all batches)"),
    "deterministic": (lambda v: v in (True, False, None, "warn"), "true, false or warn"),
    "enable_progress_bar": (lambda v: isinstance(v, bool) or v is None, "true or false"),
}


def check_seed(seed: Any) -> int:
    """``seed`` must be an integer that numpy and torch accept (0 <= seed < 2**32)."""
    if not is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is invalid: use an integer in [0, 2**32), e.g. seed=0.")
    return int(seed)


def check_trainer_settings(trainer_cfg: Mapping[str, Any]) -> None:
    """Check the ``trainer.*`` values of :data:`TRAINER_RULES`."""
    for key, (valid, allowed) in TRAINER_RULES.items():
        if key in trainer_cfg and not valid(trainer_cfg[key]):
            raise ConfigError(f"trainer.{key}={trainer_cfg[key]!r} is invalid: use {allowed}.")


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
