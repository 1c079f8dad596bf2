"""``hydra/launcher=submitit_local`` and ``slurm`` whose sweep survives a job whose process was killed.

Hydra's submitit launcher collects the sweep's results with ``[job.results()[0] for job in jobs]``;
a job whose process died without a result (SIGKILL from the out-of-memory killer, a lost node)
raises submitit's ``UncompletedJobError`` there, which ends the sweep with the later jobs' results
uncollected and the killed job's directory without ``metrics.json``. :func:`install` makes the
jobs the launcher submits (``AutoExecutor.map_array`` called with the launcher) answer
``results()`` of a killed job by recording it as failed in its own directory
(:func:`~tlresearch.runner.killed_jobs.record_killed`); the sweep goes on. A job that raised is
recorded by ``run_task`` itself, so only killed processes get here. A killed SLURM job is not
retried (SLURM requeues pre-empted jobs itself: ``runner/slurm_requeue.py``).

Why the executor and not the launcher: Hydra instantiates launchers only from the
``hydra_plugins`` namespace, and its plugin scan executes each plugin module again, which
would undo a patched launcher class; submitit's module is left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from tlresearch.runner.killed_jobs import job_dir, record_killed

try:  # the launcher plugin and submitit are optional dependencies (the `launchers` extra)
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin
    from submitit import AutoExecutor
    from submitit.core.utils import UncompletedJobError
except ImportError:  # pragma: no cover - without the plugin there is nothing to make resilient
    _plugin = None

KILLED = "KilledJob: the job's process ended without a result (SIGKILL, e.g. out of memory, or a lost node); submitit said: {}"


def install() -> None:
    """Make the jobs the submitit launchers submit record a killed job instead of raising (idempotent)."""
    if _plugin is not None and not getattr(AutoExecutor.map_array, "survives_killed_jobs", False):
        AutoExecutor.map_array = tolerant_map_array(AutoExecutor.map_array)  # type: ignore[method-assign]


def tolerant_map_array(map_array: Callable[..., list]) -> Callable[..., list]:
    """``map_array`` whose jobs, when submitted by a Hydra submitit launcher, are :class:`RecordedIfKilled`."""

    @functools.wraps(map_array)
    def wrapper(executor: Any, fn: Any, *iterables: Sequence[Any]) -> list:
        jobs = map_array(executor, fn, *iterables)
        if not isinstance(fn, _plugin.BaseSubmititLauncher):  # looked up now: Hydra's scan redefines the class
            return jobs
        overrides, job_nums = iterables[0], iterables[2]  # the launcher's (sweep_overrides, job_dir_key, job_num, ...)
        return [RecordedIfKilled(job, fn, list(o), int(n)) for job, o, n in zip(jobs, overrides, job_nums)]

    wrapper.survives_killed_jobs = True  # type: ignore[attr-defined]
    return wrapper


class RecordedIfKilled:
    """A submitit job of sweep job ``idx`` whose ``results()``, when its process ended without a
    result, records it as failed in its run directory and returns that record; otherwise the job."""

    def __init__(self, job: Any, launcher: Any, overrides: list[str], idx: int) -> None:
        self._job, self._launcher, self._overrides, self._idx = job, launcher, overrides, idx

    def results(self) -> list:
        try:
            return self._job.results()
        except UncompletedJobError as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            out_dir = job_dir(self._idx, self._overrides, self._launcher.hydra_context, self._launcher.config)
            return [record_killed(self._overrides, out_dir, KILLED.format(reason))]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)
