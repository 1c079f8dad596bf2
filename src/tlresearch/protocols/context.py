"""What a protocol needs to know about the run, as typed values (never the config).

The train task builds one :class:`RunContext` from its config, once, and hands it to
:func:`tlresearch.protocols.run.run_protocol` together with the schedule's protocol settings
(``FreezeSchedule.protocol()``): every value a protocol reads comes from one of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlresearch.core.config import check_positive
from tlresearch.models.performance import device_of_trainer_config
from tlresearch.protocols.feature_store import DEFAULT_LOCK_TIMEOUT_H, DEFAULT_MAX_GB


@dataclass(frozen=True)
class RunContext:
    """The run's settings that protocols use.

    Args:
        output_dir: the run directory (checkpoints and records of a protocol that replaces fit).
        cache_dir: the cache root (``paths.cache_dir``); features go to ``<cache_dir>/features``.
        cache_max_gb: the feature cache's size limit in GB (``paths.cache_max_gb``; None: none).
        cache_lock_timeout_h: the longest wait for a feature-cache lock (``paths.cache_lock_timeout_h``).
        seed: the run's seed (it seeds the cached augmented views).
        precision: Lightning's precision string (autocast of the feature extraction).
        accelerator: ``trainer.accelerator``, for work done outside a Trainer (see :attr:`device`).
        channels_last: the ``model.channels_last`` setting, for the extraction forward pass.
        loggers: the run's Lightning loggers.
    """

    output_dir: Path
    cache_dir: Path
    cache_max_gb: float | None = DEFAULT_MAX_GB
    cache_lock_timeout_h: float = DEFAULT_LOCK_TIMEOUT_H
    seed: int = 0
    precision: str = "32-true"
    accelerator: str = "cpu"
    channels_last: bool | str = "auto"
    loggers: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        # Checked when the run starts, not when a protocol first opens the cache.
        check_positive("paths.cache_max_gb", self.cache_max_gb, optional=True)
        check_positive("paths.cache_lock_timeout_h", self.cache_lock_timeout_h)

    @property
    def device(self) -> torch.device:
        """The device of work done outside a Trainer (a protocol that replaces fit). Resolved
        on use: a run that leaves the device to Lightning must not be refused an accelerator
        this helper does not know (``mps``)."""
        return device_of_trainer_config({"accelerator": self.accelerator})
