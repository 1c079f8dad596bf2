"""DDP inside Hydra jobs: one output directory and one logger run per job, whatever the ranks.

Lightning's ``ddp`` strategy (its subprocess-script launcher) starts ranks 1..N-1 by running
the script again with ``sys.argv[1:]`` plus ``hydra.run.dir=<HydraConfig.run.dir>``. For a
single run that is right: the children write into the parent's run directory and, being ranks
> 0, write no records (everything that writes is ``rank_zero_only``). In a *multirun* it is
wrong, in three ways (Lightning 2.6, ``lightning_fabric/strategies/launchers/subprocess_script.py``):

1. ``sys.argv`` still holds ``-m`` and the sweep's comma lists, so every child runs a whole sweep
   of its own; it pairs with the parent's jobs only while both enumerate the same jobs in the
   same order (no failure on one side, no adaptive sweeper), and it writes a second sweep
   directory (``multirun.yaml``, whose jobs never get a ``metrics.json``) wherever
   ``hydra.sweep.dir`` holds a timestamp.
2. ``HydraConfig.run.dir`` is not the job's directory in a multirun, and under the submitit
   launcher ``__main__`` is submitit's job runner, not our entry point.
3. The launcher leaves MASTER_ADDR/MASTER_PORT/LOCAL_RANK/WORLD_SIZE/NODE_RANK in
   ``os.environ`` and the process group alive, so the *next* job of the sweep believes its
   ranks were started externally, launches none, and joins a stale group.

:func:`distributed_job` wraps one Hydra job: in a multirun it makes the children a plain
single run of *this job* (its own overrides, ``hydra.run.dir`` = the job's directory), and
after the job it restores the environment and destroys the process group, so each job starts
its own ranks. Processes started by a cluster (SLURM ``srun`` through the submitit launcher,
``torchrun``) already have their rank in the environment and are left alone.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.strategies.launchers import subprocess_script

#: Environment variables Lightning's launcher sets in the parent process for its children.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_multirun() -> bool:
    """True inside a Hydra multirun job (a failure must not stop the sweep)."""
    try:
        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - a half-set-up Hydra config is no multirun
        return False


@contextmanager
def distributed_job(task: Callable[..., Any]) -> Iterator[None]:
    """Run one Hydra job of ``task`` so that Lightning's DDP ranks belong to this job alone.

    Children run ``python -m <the module defining task>`` (see :func:`module_name`).
    """
    if os.environ.get("LOCAL_RANK") is not None:  # a rank started by someone else (a child, torchrun)
        yield
        return
    saved = {key: os.environ.get(key) for key in LAUNCH_ENV}
    patched = _patch_relaunch_command(module_name(task)) if is_multirun() else None
    try:
        yield
    finally:
        if patched is not None:
            module, original = patched
            module._hydra_subprocess_cmd = original
        _destroy_process_group()
        _restore_env(saved)


def module_name(func: Callable[..., Any]) -> str:
    """The importable module that defines ``func``, e.g. ``"tlresearch.train"``.

    Under ``python -m tlresearch.train`` the function's ``__module__`` is ``"__main__"``, and
    under the submitit launcher ``__main__`` is submitit's job runner, so the name is rebuilt
    from the source file: its stem, prefixed by every enclosing package folder.
    """
    if func.__module__ != "__main__":
        return func.__module__
    path = Path(func.__code__.co_filename).resolve()
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def job_relaunch_command(entry_module: str, local_rank: int) -> tuple[list[str], str]:
    """``(command, cwd)`` that starts rank ``local_rank`` of the current Hydra job as a single run.

    The command repeats the job's own overrides (``hydra.overrides.task``: for a sweep job the
    values of this grid point or trial, never the comma lists), points ``hydra.run.dir`` at the
    job's output directory, names its log after the rank, and writes no second ``.hydra/``.
    """
    hydra_cfg = HydraConfig.get()
    command = [sys.executable, "-m", entry_module, *config_source_args(hydra_cfg), *hydra_cfg.overrides.task]
    command += [
        f"hydra.run.dir={hydra_quote(str(hydra_cfg.runtime.output_dir))}",
        f"hydra.job.name={hydra_cfg.job.name}_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, str(hydra_cfg.runtime.cwd)


def config_source_args(hydra_cfg: Any) -> list[str]:
    """Command-line flags that select the same configs: ``--config-path`` (the primary config
    directory), ``--config-dir`` (each one added on the command line) and ``--config-name``."""
    args: list[str] = []
    for source in hydra_cfg.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            args += ["--config-path", str(source.path)]
        elif source.provider == "command-line":
            args += ["--config-dir", str(source.path)]
    return [*args, "--config-name", str(hydra_cfg.job.config_name)]


def hydra_quote(value: str) -> str:
    """A value as a Hydra override reads it back verbatim: a double-quoted string in which a
    quote is escaped, and so is every backslash before a quote or at the end (Hydra's rule)."""
    escaped = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f'"{escaped}"'


def _patch_relaunch_command(entry_module: str) -> tuple[Any, Any]:
    """Make Lightning's launcher start children with :func:`job_relaunch_command`; returns what to restore."""
    original = subprocess_script._hydra_subprocess_cmd

    def relaunch(local_rank: int) -> tuple[Sequence[str], str]:
        return job_relaunch_command(entry_module, local_rank)

    subprocess_script._hydra_subprocess_cmd = relaunch
    return subprocess_script, original


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
