"""Instantiate config nodes and turn instantiation failures into messages that name the key."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from tlresearch.core.errors import ConfigError


def instantiate_node(node: DictConfig | dict, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; a failure becomes a ConfigError naming ``key``.

    A ConfigError raised by the constructed class itself passes through unchanged: it already
    names its key. Other errors (an unknown argument, a wrong type) usually mean a mistyped key.
    """
    try:
        return instantiate(node, **kwargs)
    except MissingMandatoryValue as exc:  # a `???` value nobody set
        missing = _qualified(exc.full_key or exc.key, key)
        raise ConfigError(
            f"{missing} is required and has no value (it is ??? in the config): set it on the command line, "
            f"e.g. {missing}=<value>."
        ) from None
    except InstantiationException as exc:
        cause = _root_cause(exc)
        if isinstance(cause, ConfigError):
            raise cause from None
        # MisconfigurationException: Lightning's own verdict on a Trainer argument (devices=0, ...).
        if isinstance(cause, (TypeError, ValueError, ImportError, AttributeError, MisconfigurationException)):
            raise ConfigError(
                f"The `{key}` config could not be built: {str(cause).rstrip('.')}. Check the keys under `{key}.` "
                f"(print the composed config with `--cfg job`)."
            ) from exc
        raise


def instantiate_group(group: DictConfig | None, key: str) -> dict[str, Any]:
    """Instantiate each ``_target_`` entry of a mapping (callbacks, loggers) by name."""
    if not group:
        return {}
    return {
        name: instantiate_node(node, f"{key}.{name}")
        for name, node in group.items()
        if isinstance(node, (DictConfig, dict)) and "_target_" in node
    }


def _qualified(name: Any, key: str) -> str:
    """``name`` as a full config key under ``key``: a node converted to a plain dict (as the
    classifier's hyper-parameters are) reports keys relative to itself."""
    if not name:
        return key
    name = str(name)
    return name if name == key or name.startswith(f"{key}.") else f"{key}.{name}"


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
