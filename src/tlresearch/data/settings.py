"""The settings every DataModule shares, checked and resolved: the augmentation and
preprocessing (from their config nodes), the loader's workers and pinned memory (``"auto"``),
and the dataset root. User mistakes raise :class:`~tlresearch.core.errors.ConfigError` naming
the ``data.*`` key (conf/data/*.yaml document each)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tlresearch.core.config import from_node, is_int, require

from .transforms import Augmentation, Preprocessing


def coerce_augmentation(value: Any) -> Augmentation:
    """``None`` (the default augmentation), an :class:`Augmentation`, or a mapping of its fields."""
    if value is None:
        return Augmentation()
    aug = from_node(Augmentation, value, "data.augment")
    scale = aug.scale
    valid = len(scale) == 2 and all(isinstance(s, (int, float)) for s in scale) and 0 < scale[0] <= scale[1] <= 1
    require(valid, "data.augment.scale", list(scale), "use [min, max] with 0 < min <= max <= 1, e.g. [0.08, 1.0].")
    return aug


def coerce_preprocessing(value: Any) -> Preprocessing:
    """``None`` (ImageNet defaults at 224 px), a :class:`Preprocessing`, or a mapping of its fields.

    Hydra's ``instantiate(cfg, preprocessing=pre)`` merges ``pre`` into the config, so it arrives
    as a DictConfig; this turns it back into a :class:`Preprocessing`.
    """
    if value is None:
        return Preprocessing()
    return from_node(Preprocessing, value, "preprocessing")


def auto_num_workers() -> int:
    """min(8, CPUs available to this process - 1), at least 0."""
    try:
        cpus = len(os.sched_getaffinity(0))  # honours taskset/cgroup pinning, unlike cpu_count
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def resolve_num_workers(value: int | str) -> int:
    """``"auto"`` -> :func:`auto_num_workers`; a non-negative int is used as is."""
    if value == "auto":
        return auto_num_workers()
    require(is_int(value) and value >= 0, "data.num_workers", value, "use a non-negative integer or 'auto' (min(8, CPUs - 1)).")
    return int(value)


def resolve_pin_memory(value: bool | str) -> bool:
    """``"auto"`` -> whether CUDA is available; a bool is used as is."""
    if value == "auto":
        return torch.cuda.is_available()
    require(isinstance(value, bool), "data.pin_memory", value, "use true, false or 'auto' (true when a CUDA device is available).")
    return bool(value)


def check_root(root: Any) -> Path:
    """``data.root`` as an absolute path (``~`` and ``$VARS`` expanded); an empty value is refused."""
    valid = isinstance(root, (str, os.PathLike)) and bool(str(root).strip())
    require(valid, "data.root", root, "use a directory path, e.g. data.root=/datasets/pets.")
    # Absolute now, so messages, manifests and describe() do not depend on a later chdir.
    return Path(os.path.expandvars(os.path.expanduser(str(root)))).absolute()
