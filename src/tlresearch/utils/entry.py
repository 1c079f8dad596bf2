"""What every entry point shares: where the configs live, and turning a task into a CLI.

The ``@hydra.main`` wrappers stay thin (lightning-hydra-template style): they call a pure
task function and add only error reporting, the exit code and the value sweepers optimise.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tlresearch.errors import ConfigError
from tlresearch.utils.io import write_json_atomic

log = logging.getLogger("tlresearch")


def config_dir() -> Path:
    """The Hydra config directory: ``conf/`` of a source checkout (editable installs), else
    the copy installed as the package ``tlresearch.conf``."""
    checkout = Path(__file__).resolve().parents[3] / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    return Path(str(resources.files("tlresearch.conf")))


def is_multirun() -> bool:
    """True inside a Hydra multirun job (a failure must not stop the sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


def run_task(task: Callable[[DictConfig], tuple[dict, dict]], cfg: DictConfig) -> float | None:
    """Run ``task(cfg)``; report failures cleanly; return the metric a sweeper optimises.

    A :class:`ConfigError` prints its message (no traceback) and exits with code 2; any other
    exception is a bug and keeps its traceback. Either way the run directory's
    ``metrics.json`` records ``status: failed`` and the error, and inside a multirun the sweep
    carries on with the next job.
    """
    out_dir = Path(cfg.paths.output_dir) if "paths" in cfg else None
    try:
        metrics, _ = task(cfg)
    except ConfigError as exc:
        _record_failure(out_dir, f"ConfigError: {exc}")
        log.error("%s", exc)
        if is_multirun():
            return None
        print(f"\nError: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _record_failure(out_dir, "interrupted by the user", status="interrupted")
        raise
    except Exception as exc:  # noqa: BLE001
        _record_failure(out_dir, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if is_multirun():
            log.exception("job failed; the sweep continues")
            return None
        raise
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def _record_failure(out_dir: Path | None, error: str, trace: str | None = None, status: str = "failed") -> None:
    if out_dir is None:
        return
    record: dict[str, Any] = {"status": status, "error": error}
    if trace:
        record["traceback"] = trace
    try:
        from pytorch_lightning.utilities import rank_zero_only

        if rank_zero_only.rank == 0:
            write_json_atomic(out_dir / "metrics.json", record)
    except OSError:  # e.g. a read-only or full disk: the message above still reaches the user
        log.warning("could not write %s", out_dir / "metrics.json")
