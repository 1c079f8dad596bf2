"""A run's saved config as a tree: resolving it, dotted paths into it, and override strings.

Hydra saves ``.hydra/config.yaml`` with its interpolations unresolved and the job's overrides
as strings (``+backbone@model=vgg16``, ``~a.b``); :mod:`tlresearch.results.records` reads run
directories through these helpers, and the result tables list a config's keys with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: What :func:`get_path` returns for a path that does not exist (None is a valid config value),
#: and what :func:`set_path` takes to delete a key.
MISSING = object()


def resolve_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve the interpolations of a config as Hydra saved it, leaf by leaf where needed.

    Hydra saves ``config.yaml`` unresolved; ``${optimizer.lr}`` resolves here, while
    ``${hydra:runtime.output_dir}`` cannot outside a Hydra run and stays as its raw string.
    """
    try:
        conf = OmegaConf.create(dict(raw))
    except Exception:  # noqa: BLE001 - not valid as an OmegaConf config (odd keys): use the YAML as it is
        return dict(raw)
    try:
        return OmegaConf.to_container(conf, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - some interpolation cannot resolve here: resolve what can, leaf by leaf
        return _resolve_leafwise(conf)


def _resolve_leafwise(node: Any) -> Any:
    if isinstance(node, DictConfig):
        keys = list(node.keys())
    elif isinstance(node, ListConfig):
        keys = list(range(len(node)))
    else:
        return node
    out = {} if isinstance(node, DictConfig) else [None] * len(keys)
    for key in keys:
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here: keep "${...}"
            value = node._get_node(key)._value()
        out[key] = _resolve_leafwise(value)
    return out


def split_override(text: str) -> tuple[str, str | None]:
    """``"+backbone@model=vgg16"`` -> ``("backbone", "vgg16")``; ``"~a.b"`` -> ``("a.b", None)``."""
    key, sep, value = str(text).partition("=")
    key = key.lstrip("+~").split("@", 1)[0].strip()
    return key, (value if sep else None)


def get_path(config: Any, key: str) -> Any:
    """The node at dotted ``key`` (list items by index), or :data:`MISSING` when there is none."""
    node = config
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def set_path(config: dict[str, Any], key: str, value: Any) -> None:
    """Set (or, with ``MISSING``, delete) a dotted key, creating mappings on the way."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            if value is MISSING:
                return
            node[part] = {}
        node = node[part]
    if value is MISSING:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def config_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted path of a config, mappings included (``optimizer``, ``optimizer.lr``, …)."""
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, Mapping):
            keys.extend(config_keys(value, prefix=f"{path}."))
    return keys


def config_leaves(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The non-mapping values of a config by dotted path."""
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            leaves.update(config_leaves(value, prefix=f"{path}."))
        else:
            leaves[path] = value
    return leaves

