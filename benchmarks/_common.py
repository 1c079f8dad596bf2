"""Shared pieces of the benchmarks: an isolated workspace, configs composed as the CLI would,
timing callbacks, interleaved measurement and the closing ratio lines.

Machines are noisy (other processes share the cores), so every benchmark measures its two
sides alternately in one process and reports medians and their ratio, never a lone timing.
"""

from __future__ import annotations

import atexit
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = Path(tempfile.mkdtemp(prefix="tlresearch-bench-"))  # generated data, runs, caches; removed at exit
atexit.register(shutil.rmtree, WORKSPACE, ignore_errors=True)

# Isolated caches (features, manifests, hub weights) and no network services, as in the tests.
os.environ.update(
    {
        "TLRESEARCH_CACHE": str(WORKSPACE / "cache"),
        "TORCH_HOME": str(WORKSPACE / "torch"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
    }
)
sys.path.insert(0, str(REPO))  # `tests.helpers` (the compose API as the CLI uses it) and `benchmarks`

import pytorch_lightning as pl
import torch

for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "tlresearch"):
    logging.getLogger(name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


def compose(overrides: list[str], run_name: str) -> Any:
    """The train config ``python -m tlresearch.train <overrides>`` would run, in the workspace."""
    from tests.helpers import compose_cfg

    return compose_cfg("train", [*overrides, "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"],
                       WORKSPACE / "runs" / run_name)


def quiet_train(cfg: Any) -> tuple[dict, dict]:
    """``tlresearch.train.train`` with its closing summary print silenced."""
    import contextlib
    import io

    from tlresearch.train import train

    with contextlib.redirect_stdout(io.StringIO()):
        return train(cfg)


class EpochClock(pl.Callback):
    """Timestamps of each training epoch's start and of each training batch's end.

    ``epoch_seconds()``: start-to-start durations (everything an epoch costs: training,
    validation, checkpoints, logging). ``step_seconds(epoch)``: the duration of each training
    step of that epoch, data loading included (start or previous batch end to batch end).
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.batch_ends: list[list[float]] = []
        self.fit_end: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())
        self.batch_ends.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch_ends[-1].append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.fit_end = time.perf_counter()

    def epoch_seconds(self) -> list[float]:
        ends = [*self.starts[1:], self.fit_end] if self.fit_end is not None else self.starts[1:]
        return [b - a for a, b in zip(self.starts, ends)]

    def step_seconds(self, epoch: int) -> list[float]:
        return step_durations(self.starts[epoch], self.batch_ends[epoch])


def step_durations(start: float, ends: list[float]) -> list[float]:
    """Durations between consecutive timestamps, the first from ``start``."""
    return [b - a for a, b in zip([start, *ends[:-1]], ends)]


def clock_of(objects: dict) -> EpochClock:
    """The :class:`EpochClock` attached through ``+callbacks.clock._target_=benchmarks._common.EpochClock``."""
    return next(c for c in objects["trainer"].callbacks if isinstance(c, EpochClock))


CLOCK = ["+callbacks.clock._target_=benchmarks._common.EpochClock"]


def interleave(sides: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Call each side once per round, alternating (ABAB... so drifts in machine load hit both
    alike); each call returns its measurements, collected per side."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            out[name] += sides[name]()
    return out


def set_threads(threads: int) -> None:
    """Intra-op threads for this process (``0``: torch's default). On a shared machine one
    thread is the stable choice: with several, every op waits for its slowest thread, and a
    core taken by another process stalls them all (measured: up to 30x on small ops)."""
    if threads > 0:
        torch.set_num_threads(threads)


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    """One line describing where the numbers come from."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {cpus} CPUs (torch threads {torch.get_num_threads()}), load average {load:.1f}; "
        f"python {platform.python_version()}, torch {torch.__version__}, lightning {pl.__version__}"
    )


def report(title: str, rows: list[tuple[str, str]], ratios: list[tuple[str, float, str]]) -> None:
    """Print a table of measurements, then the ratios last (one line each, with its target)."""
    print(f"\n== {title}")
    print(f"machine: {machine()}")
    width = max(len(k) for k, _ in rows) if rows else 0
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("ratios:")
    for name, value, target in ratios:
        print(f"  {name}: {value:.2f}x  ({target})")
