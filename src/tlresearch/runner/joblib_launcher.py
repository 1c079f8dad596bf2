"""``hydra/launcher=joblib`` that survives a killed worker process.

joblib's loky pool fails the whole ``Parallel`` call when one worker process dies (SIGKILL, the
kernel's out-of-memory killer), and Hydra's joblib launcher lets that ``TerminatedWorkerError`` end
the sweep. :func:`launch` replaces the launcher's ``_core.launch`` (:func:`install`, called by
the entry points; Hydra instantiates launchers only from the ``hydra_plugins`` namespace, which
an editable install cannot extend): each job marks itself running while it runs; after a killed
worker the jobs that were running are retried one at a time (an innocent neighbour then
finishes, and the job killed again is known), the others go on in parallel, and a job killed
when alone records ``status: failed`` in its own directory, like any other failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals

from tlresearch.runner.killed_jobs import job_dir, record_killed

try:  # the launcher plugin and joblib are optional dependencies (the `launchers` extra)
    from hydra_plugins.hydra_joblib_launcher import _core
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError
except ImportError:  # pragma: no cover - without the plugin there is nothing to make resilient
    _core = None

log = logging.getLogger(__name__)

#: Folder of the sweep directory holding one file per running job: the job's run directory.
RUNNING = ".running"
KILLED = "KilledWorker: the job's process was killed (SIGKILL, e.g. out of memory), and again when retried alone"


def install() -> None:
    """Make ``hydra/launcher=joblib`` use :func:`launch` (idempotent; no-op without the plugin)."""
    if _core is not None:
        _core.launch = launch


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Run a sweep's jobs in the joblib pool (as Hydra's joblib launcher does), surviving killed workers."""
    setup_globals()
    running = Path(str(launcher.config.hydra.sweep.dir)) / RUNNING
    running.mkdir(parents=True, exist_ok=True)
    options = {**launcher.joblib, "backend": "loky"}
    _core.process_joblib_cfg(options)
    jobs = {initial_job_idx + i: list(o) for i, o in enumerate(job_overrides)}
    log.info("Joblib.Parallel(%s) is launching %d jobs into %s", options, len(jobs), running.parent)
    results: dict[int, JobReturn] = {}
    suspects: list[int] = []
    while len(results) + len(suspects) < len(jobs):
        todo = [i for i in jobs if i not in results and i not in suspects]
        suspects += _run(launcher, jobs, todo, options, running, results)
    for idx in suspects:  # alone: a job killed again is the one that gets killed
        if _run(launcher, jobs, [idx], {**options, "n_jobs": 2}, running, results):
            results[idx] = _record_killed(jobs[idx], running / str(idx))
    if not any(running.iterdir()):
        running.rmdir()
    return [results[i] for i in sorted(jobs)]


def _run(launcher: Any, jobs: dict[int, list[str]], indices: list[int], options: dict, running: Path,
         results: dict[int, JobReturn]) -> list[int]:
    """Run ``indices`` in the pool; the jobs that were running when a worker died ([] if none died)."""
    state = Singleton.get_state()
    calls = (delayed(_run_marked)(i, jobs[i], launcher.hydra_context, launcher.config, launcher.task_function, state, running)
             for i in indices)
    try:
        for idx, result in Parallel(return_as="generator_unordered", **options)(calls):
            results[idx] = result
    except TerminatedWorkerError:
        killed = [i for i in indices if (running / str(i)).is_file()]
        log.warning("A worker process was killed while jobs %s ran: retrying each of them alone.", killed)
        return killed or [i for i in indices if i not in results]
    return []


def _run_marked(idx: int, overrides: Sequence[str], hydra_context: Any, config: Any, task_function: Any,
                singleton_state: dict, running: Path) -> tuple[int, JobReturn]:
    """In a worker: run job ``idx`` with ``running/<idx>`` naming its run directory meanwhile."""
    setup_globals()
    Singleton.set_state(singleton_state)
    marker = running / str(idx)
    marker.write_text(str(job_dir(idx, overrides, hydra_context, config)))
    try:
        return idx, _core.execute_job(idx, overrides, hydra_context, config, task_function, singleton_state)
    finally:  # only a killed process leaves its marker
        marker.unlink(missing_ok=True)


def _record_killed(overrides: list[str], marker: Path) -> JobReturn:
    """Record a job killed twice as failed in the directory its marker names."""
    out_dir = Path(marker.read_text()) if marker.is_file() else None  # None: killed before it began
    marker.unlink(missing_ok=True)
    return record_killed(overrides, out_dir, KILLED)
