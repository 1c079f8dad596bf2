"""A sweep job whose process was killed: where it ran, and its record, for the launchers that survive it.

Hydra's launchers end the whole sweep when a job's process dies without a result (SIGKILL from
the out-of-memory killer, a lost node): joblib at loky's ``TerminatedWorkerError``, submitit at
``Job.results()``. ``runner/joblib_launcher.py`` and ``runner/submitit_launcher.py`` catch that;
:func:`record_killed` then writes ``status: failed`` into the job's own directory
(:func:`job_dir`), as any other failure, and gives the sweep a result it accepts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict

from tlresearch.runner.entry import record_failure

log = logging.getLogger(__name__)


def job_dir(idx: int, overrides: Sequence[str], hydra_context: Any, config: Any) -> Path:
    """The run directory Hydra gives job ``idx`` (computed as ``execute_job`` and ``run_job`` do;
    Hydra's config is set to the job's meanwhile, for interpolations such as ``${hydra:job.num}``)."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(sweep_config)
    try:
        return Path(str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))) / str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
    finally:
        if previous is not None:
            hydra_config.cfg = previous


def record_killed(overrides: Sequence[str], out_dir: Path | None, error: str) -> JobReturn:
    """Record a killed job as failed in its own directory (``None``: killed before it began); a
    result the sweep accepts: COMPLETED without a value, as ``run_task`` returns for any failed job."""
    log.error("A job was killed (%s): recorded as failed in %s.", " ".join(overrides), out_dir)
    record_failure(out_dir, error)
    return JobReturn(overrides=list(overrides), working_dir=str(out_dir), status=JobStatus.COMPLETED)
