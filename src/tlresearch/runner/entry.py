"""What every entry point shares: where the configs live, and turning a task into a CLI.

The ``@hydra.main`` wrappers stay thin (lightning-hydra-template style): they call a pure
task function and add only error reporting, the exit code and the value sweepers optimise.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tlresearch.core.errors import ConfigError
from tlresearch.core.files import write_json_atomic
from tlresearch.results.wandb_report import finish_open_wandb_run
from tlresearch.runner.distributed import distributed_job, is_multirun
from tlresearch.runner.slurm_requeue import PreemptionNotice

log = logging.getLogger("tlresearch")

#: Exit status of a run stopped by SIGTERM (last.ckpt written): 128 + 15, as a shell reports it.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM

# Lightning 2.6 on torch >= 2.10 warns about its own use of a deprecated torch API on every
# step; the command lines keep their output for what the user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def config_dir() -> Path:
    """The Hydra config directory: ``conf/`` of a source checkout (editable installs), else
    the copy installed as the package ``tlresearch.conf``."""
    checkout = Path(__file__).resolve().parents[3] / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    return Path(str(resources.files("tlresearch.conf")))


def run_task(task: Callable[[DictConfig], tuple[dict, dict]], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)``; report failures cleanly; return the metric a sweeper optimises.

    A :class:`ConfigError` prints its message (no traceback) and exits with code 2; any other
    exception is a bug and keeps its traceback. Either way the run directory's
    ``metrics.json`` records ``status: failed`` and the error, and inside a multirun the sweep
    carries on with the next job. A run stopped from outside (Ctrl-C, SIGTERM) records
    ``status: interrupted`` (SIGTERM: exit status 143, after writing ``last.ckpt``); a SIGKILLed
    one has no record at all (tables show it as missing). Inside a submitit job the scheduler's
    warning signal stops the run as SIGTERM does, then submitit requeues it (runner/slurm_requeue.py).
    """
    out_dir = Path(cfg.paths.output_dir) if "paths" in cfg else None
    failed = True
    notice = PreemptionNotice().install()
    try:
        with distributed_job(task):  # DDP ranks of this job only (see runner/distributed.py)
            metrics, _ = task(cfg)
        failed = False
    except ConfigError as exc:
        record_failure(out_dir, f"ConfigError: {exc}")
        log.error("%s", exc)
        if is_multirun():
            return None
        exit_on_config_error(exc)
    except KeyboardInterrupt:
        record_failure(out_dir, "interrupted by the user", status="interrupted")
        raise
    except SystemExit as exc:  # Lightning exits after a graceful Ctrl-C, and stops on SIGTERM with SIGTERMException
        if notice.pending:
            record_failure(out_dir, notice.describe(), status="interrupted")
            refused = notice.hand_over()  # submitit requeues the job and exits; it returns only if it refused
            if refused:
                record_failure(out_dir, f"interrupted by the scheduler's warning, not requeued ({refused}); "
                               "continue it with resume=auto", status="interrupted")
        elif _is_interruption(exc):
            record_failure(out_dir, "interrupted (Ctrl-C or SIGTERM); continue it with resume=auto", status="interrupted")
        else:
            record_failure(out_dir, f"SystemExit: exited with code {exc.code}")
        if isinstance(exc, SIGTERMException):  # Lightning's carries no code (exit 0): a scheduler must see the kill
            raise SystemExit(SIGTERM_EXIT_CODE) from exc
        raise
    except Exception as exc:
        record_failure(out_dir, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if is_multirun():
            log.exception("job failed; the sweep continues")
            return None
        raise
    finally:
        notice.uninstall()
        finish_open_wandb_run(failed)  # a W&B run never carries over into the next job of a sweep
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def exit_on_config_error(exc: ConfigError) -> NoReturn:
    """End the command on a user's mistake: its message alone on stderr (no traceback), exit status 2."""
    print(f"\nError: {exc}", file=sys.stderr)
    sys.exit(2)


def _is_interruption(exc: SystemExit) -> bool:
    """Whether a SystemExit ends a run stopped from outside: Lightning's exit after Ctrl-C (its
    context is the KeyboardInterrupt) or its SIGTERMException."""
    return isinstance(exc, SIGTERMException) or isinstance(exc.__context__, KeyboardInterrupt)


def record_failure(out_dir: Path | None, error: str, trace: str | None = None, status: str = "failed") -> None:
    """Write ``metrics.json`` of a run that did not complete (``status``, ``error``); no-op without a directory."""
    if out_dir is None:
        return
    record: dict[str, Any] = {"status": status, "error": error}
    if trace:
        record["traceback"] = trace
    try:
        if rank_zero_only.rank == 0:
            write_json_atomic(out_dir / "metrics.json", record)
    except OSError:  # e.g. a read-only or full disk: the message above still reaches the user
        log.warning("could not write %s", out_dir / "metrics.json")
