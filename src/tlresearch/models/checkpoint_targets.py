"""What a checkpoint may name: the allow-list for rebuilding a model from its hyper-parameters.

Checkpoints are read with ``torch.load(weights_only=True)`` (``checkpoints/storage.py``): no
pickled code runs. But a checkpoint's hyper-parameters are config dicts, and rebuilding the model
hands them to Hydra's ``instantiate``, which imports and calls whatever their ``_target_`` names
(``pathlib.Path.write_text`` as happily as a backbone factory). So before anything is built, every
node of the hyper-parameters is checked here, by convention in code (not read from ``conf/``):

* ``backbone._target_``: a ``create_backbone`` factory defined in a ``tlresearch.models`` module;
* ``finetune._target_``: a :class:`~tlresearch.finetune.base.FreezeSchedule` subclass defined in
  a ``tlresearch.finetune`` module;
* ``optimizer._target_``: a ``torch.optim.<Name>`` optimizer class (``_partial_`` allowed);
* ``scheduler._target_``: a public function of ``tlresearch.models.schedulers`` or a
  ``torch.optim.lr_scheduler.<Name>`` class (``_partial_`` allowed).

Anything else Hydra would act on is refused, naming its key path: a ``_target_`` anywhere else
(nested targets), ``_args_``, ``_recursive_``, ``_convert_``, ``_partial_`` outside the optimizer
and scheduler, and ``${...}`` interpolations (resolved by Hydra, they could decode into new
nodes). ``trust_targets`` (module prefixes, e.g. ``["my_pkg"]``) lets a user's own package be
named, anywhere, with Hydra's keys: the opt-in for models built from their own code.

A name is resolved by importing its module only when that module is ours (``tlresearch.models``,
``tlresearch.finetune``) or ``torch.optim``, and the object must be defined there: a path through
a module's imports (``tlresearch.finetune.full.os.system``) is not the module's own class.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from tlresearch.checkpoints.storage import read_checkpoint
from tlresearch.core.config import check_module_prefixes
from tlresearch.core.errors import ConfigError
from tlresearch.finetune.base import FreezeSchedule


@dataclass(frozen=True)
class TargetRule:
    """What one hyper-parameter group's ``_target_`` may name.

    Args:
        what: the kind of object, for messages.
        allows: ``target -> bool`` (resolving it only within ``tlresearch``/``torch.optim``).
        partial: whether ``_partial_`` may be set (the optimizer and scheduler are partials).
    """

    what: str
    allows: Callable[[str], bool]
    partial: bool = False


def _own_object(target: str, package: str) -> Any:
    """The object ``target`` names when its module is ``package`` or lies under it and defines
    it (not imports it); None otherwise. Only modules under ``package`` are imported."""
    module_name, _, attr = target.rpartition(".")
    parts = target.split(".")
    if not all(p.isidentifier() for p in parts) or attr.startswith("_"):
        return None
    if module_name != package and not module_name.startswith(f"{package}."):
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    obj = getattr(module, attr, None)
    return obj if getattr(obj, "__module__", None) == module_name else None


def _torch_class(target: str, module: Any, base: type) -> bool:
    """Whether ``target`` is ``<module>.<Name>`` for a ``base`` subclass ``module`` exports."""
    prefix, _, name = target.rpartition(".")
    obj = getattr(module, name, None) if prefix == module.__name__ and name.isidentifier() else None
    return inspect.isclass(obj) and issubclass(obj, base) and obj is not base


def _is_backbone_factory(target: str) -> bool:
    obj = _own_object(target, "tlresearch.models")
    return inspect.isfunction(obj) and obj.__name__ == "create_backbone"


def _is_freeze_schedule(target: str) -> bool:
    obj = _own_object(target, "tlresearch.finetune")
    return inspect.isclass(obj) and issubclass(obj, FreezeSchedule)


def _is_lr_schedule(target: str) -> bool:
    return inspect.isfunction(_own_object(target, "tlresearch.models.schedulers")) or _torch_class(
        target, torch.optim.lr_scheduler, LRScheduler)


#: The hyper-parameters the classifier instantiates, and what each may name.
CHECKPOINT_TARGETS: dict[str, TargetRule] = {
    "backbone": TargetRule("a backbone factory (tlresearch.models.<family>_backbones.create_backbone)", _is_backbone_factory),
    "finetune": TargetRule("a freeze schedule (a FreezeSchedule class of tlresearch.finetune)", _is_freeze_schedule),
    "optimizer": TargetRule("a torch.optim optimizer (torch.optim.<Name>)",
                            lambda t: _torch_class(t, torch.optim, torch.optim.Optimizer), partial=True),
    "scheduler": TargetRule("an LR schedule (tlresearch.models.schedulers.<name> or torch.optim.lr_scheduler.<Name>)",
                            _is_lr_schedule, partial=True),
}

_HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def check_checkpoint_targets(hparams: Any, what: str, trust_targets: Iterable[str] = ()) -> None:
    """Raise a ConfigError, before anything is built, unless rebuilding a model from the
    checkpoint hyper-parameters ``hparams`` can only call what the allow-list names (the module
    docstring) or a module under one of ``trust_targets``. ``what`` names the checkpoint
    (``ckpt_path='...'``) in the message."""
    trusted = check_module_prefixes("trust_targets", trust_targets)
    if hparams is None:
        return
    if not isinstance(hparams, Mapping):
        raise ConfigError(f"{what} is not a tlresearch classifier checkpoint: its hyper_parameters are a "
                          f"{type(hparams).__name__}, not a mapping.")
    problems: list[str] = []
    for key, value in hparams.items():
        _check_node(value, f"hyper_parameters.{key}", CHECKPOINT_TARGETS.get(str(key)), trusted, problems)
    if problems:
        raise ConfigError(
            f"{what} is refused: rebuilding its model would call code that tlresearch does not build models with: "
            f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}. Nothing was built. A checkpoint may name only "
            "tlresearch's own backbone factories, freeze schedules and LR schedules and torch.optim's optimizers and "
            "schedulers. If you wrote this checkpoint with your own package, allow it: trust_targets=[<package>]."
        )


def _check_node(node: Any, path: str, rule: TargetRule | None, trusted: tuple[str, ...], problems: list[str]) -> None:
    """Add to ``problems`` what Hydra would act on in ``node`` (at ``path``) that is not allowed;
    ``rule`` is the group's rule at a group's root, None below it."""
    if isinstance(node, str):
        if "${" in node:
            problems.append(f"{path}={node!r} (an interpolation, resolved when the model is built)")
        return
    if isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _check_node(item, f"{path}[{i}]", None, trusted, problems)
        return
    if not isinstance(node, Mapping):
        return
    target = node.get("_target_")
    own = isinstance(target, str) and any(target == p or target.startswith(f"{p}.") for p in trusted)
    for key, value in node.items():
        key_path = f"{path}.{key}"
        if own or not _is_special(key):
            _check_node(value, key_path, None, trusted, problems)
        elif rule is not None and key == "_target_":
            if not isinstance(value, str) or not rule.allows(value):
                problems.append(f"{key_path}={value!r} (not {rule.what})")
        elif not (rule is not None and rule.partial and key == "_partial_" and isinstance(value, bool)):
            kind = "a nested target" if key == "_target_" else f"Hydra's {key}"
            problems.append(f"{key_path}={value!r} ({kind}: tlresearch.train never writes it there)")


def _is_special(key: Any) -> bool:
    """Hydra's own keys (``_target_``, ``_args_``, ...) and any other ``_name_`` it may add."""
    return isinstance(key, str) and (key in _HYDRA_KEYS or (len(key) > 2 and key.startswith("_") and key.endswith("_")))


def check_checkpoint_file(path: str | os.PathLike, key: str = "ckpt_path", trust_targets: Iterable[str] = ()) -> dict[str, Any]:
    """Read the checkpoint at ``path`` (``weights_only``) and check its hyper-parameters
    (:func:`check_checkpoint_targets`); return it. ``key`` names it in messages. The tensors are
    read, not memory-mapped: a read checks each tensor's record against its header."""
    ckpt = read_checkpoint(path, key)
    check_checkpoint_targets(ckpt.get("hyper_parameters"), f"{key}={str(path)!r}", trust_targets)
    return ckpt
