"""Typed, validated settings built from config nodes.

Every settings class of this package is a frozen dataclass built by :func:`from_node`, which
rejects unknown keys (with close-name suggestions) and lets the class validate its values
with :func:`require`. Messages name the full config key (``adversarial.eps``), the bad value
and the fix.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from tlresearch.errors import ConfigError, suggest

T = TypeVar("T")


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); other values unchanged."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def from_node(cls: type[T], node: Mapping[str, Any] | None, key: str, **overrides: Any) -> T:
    """Build the dataclass ``cls`` from ``node`` (keys under ``key``), then validate it.

    Unknown keys raise a ConfigError (a typo must not silently fall back to a default);
    ``overrides`` win over ``node``. ``cls.validate(key)`` runs when the class defines it.
    """
    values = dict(plain(node) or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    nested = _nested_settings_types(cls)
    for name in values:
        if name not in fields:
            raise ConfigError(f"`{key}.{name}` is not a setting; the settings of `{key}` are {sorted(fields)}.{suggest(name, fields)}")
    for name, value in values.items():
        if name in nested and not dataclasses.is_dataclass(value):
            values[name] = from_node(nested[name], value, f"{key}.{name}")
    values.update(overrides)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)
    return obj


def _nested_settings_types(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are settings dataclasses themselves (built recursively)."""
    hints = typing.get_type_hints(cls)
    return {name: hint for name, hint in hints.items() if isinstance(hint, type) and dataclasses.is_dataclass(hint)}


def require(ok: bool, key: str, value: Any, fix: str) -> None:
    """Raise ``ConfigError("key=value is invalid: fix")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


def require_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise a ConfigError (with suggestions) unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is invalid: use one of {list(choices)}.{suggest(str(value), choices)}")


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
