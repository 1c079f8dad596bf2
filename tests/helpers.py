"""Compose task configs through Hydra's compose API, as the entry points would."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tlresearch.results.predictions import Predictions, read_predictions
from tlresearch.results.statistics import accuracy, mean_class_accuracy
from tlresearch.runner.entry import config_dir

REPO = Path(__file__).resolve().parents[1]

# Small, fast defaults for CPU tests: tiny inputs, no progress bars, a couple of epochs.
FAST = [
    "backbone=resnet18",
    "backbone.weights=null",
    "backbone.input_size=64",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "data.num_workers=0",
    "data.batch_size=16",
]


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    """The config ``python -m tlresearch.<config_name> <overrides>`` would run with, writing to ``out_dir``."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=[*overrides, f"hydra.run.dir={out_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg.hydra
    return cfg


def cli_env(env: dict | None = None) -> dict[str, str]:
    """The environment of a command a user would run: this one, without the W&B service that a W&B
    test in this process started (``WANDB_SERVICE``: sharing it, a killed run's W&B run stays open
    and the resumed one is refused with "run ID ... is in use")."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("WANDB_SERVICE", None)
    return full_env


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=cli_env(env)
    )


def run_in_process(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``python -m <module> *argv`` in this process: ``(exit code, stdout + stderr)``.

    The same path as the command line (Hydra's parsing, composition and error reporting, then
    ``run_task``) without paying the interpreter's start-up for each case. Hydra's global state and
    the logging handlers it installs are put back afterwards, so later tests are unaffected.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with mock.patch.object(sys, "argv", [module, *argv]):
            try:
                importlib.import_module(module).main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def truncate_file(path: Path) -> None:
    """Cut a file to half its size, as a copy interrupted mid-way leaves a JPEG (PIL then refuses it)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def check_predictions(run_dir: Path, metrics: dict, datamodule=None, split: str = "test") -> Predictions:
    """``predictions.csv`` of a completed run: every image of ``datamodule``'s split once, in
    dataset order, with its label (when given), and the metrics it implies are the run's
    (accuracy and mean per-class accuracy from the CSV == ``<split>/acc`` and
    ``<split>/mean_class_acc`` of metrics.json, whose 95% intervals bracket them)."""
    predictions = read_predictions(run_dir / "predictions.csv")
    assert len(set(predictions.paths)) == len(predictions.paths), "an image is listed twice"
    if datamodule is not None:
        samples = getattr(datamodule, "images", datamodule).dataset(split).samples
        listed = [(path, predictions.class_names[label]) for path, label in zip(predictions.paths, predictions.labels)]
        assert listed == [(s.rel, datamodule.classes[s.label]) for s in samples]
    acc = accuracy(predictions.labels, predictions.predictions)
    per_class = mean_class_accuracy(predictions.labels, predictions.predictions)
    for key, value in ((f"{split}/acc", acc), (f"{split}/mean_class_acc", per_class)):
        assert value == pytest.approx(metrics[key], abs=1e-6), key
        assert metrics[f"{key}_ci_low"] <= value <= metrics[f"{key}_ci_high"], key
    return predictions
