"""Fake run directories, written the way Hydra and the train task write them.

``.hydra/config.yaml`` is the task config *unresolved* (Hydra saves interpolations as
they are), ``.hydra/hydra.yaml`` holds ``hydra.runtime.choices``, ``hydra.overrides.task``
and ``hydra.job.num``, ``.hydra/overrides.yaml`` the job's override list, and the train task
writes ``metrics.json`` (absent when a job was killed). A sweep dir holds ``multirun.yaml``
with the sweep's comma-list overrides in ``hydra.overrides.task``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

BACKBONE_NAMES = {"resnet50": "resnet50", "vgg16": "vgg16", "timm": "vit_small_patch16_224"}
HYDRA_CHOICES = {"hydra/sweeper": "basic", "hydra/launcher": "basic", "hydra/output": "default"}


def make_config(backbone: str = "resnet50", finetune: str = "linear_probe", lr: float = 0.01, seed: int = 0,
                data: str = "pets") -> dict[str, Any]:
    """A task config as Hydra saves it: group nodes with a name, interpolations unresolved."""
    return {
        "data": {"name": data, "batch_size": 32, "num_classes": 37},
        "backbone": {"name": BACKBONE_NAMES[backbone], "pretrained": True},
        "finetune": {"name": finetune, "head_lr_scale": 1.0},
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "scheduler": {"name": "onecycle", "max_lr": "${optimizer.lr}"},
        "trainer": {"max_epochs": 10},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
        "seed": seed,
    }


def write_run(run_dir: Path, config: dict[str, Any], overrides: list[str], choices: dict[str, Any],
              metrics: dict[str, Any] | None, job_num: int | None = None) -> Path:
    """Write one run directory; ``metrics=None`` leaves out metrics.json (a killed job)."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    hydra = {
        "hydra": {
            "run": {"dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"},
            "sweep": {"dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}", "subdir": "${hydra.job.num}"},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "max_batch_size": None, "params": None},
            "mode": "MULTIRUN" if job_num is not None else "RUN",
            "overrides": {"hydra": ["hydra.mode=MULTIRUN"] if job_num is not None else [], "task": list(overrides)},
            "job": {"name": "train", "override_dirname": ",".join(overrides), "id": str(job_num or 0),
                    "num": job_num if job_num is not None else 0, "config_name": "train"},
            "runtime": {"version": "1.3.2", "output_dir": str(run_dir), "choices": {**choices, **HYDRA_CHOICES}},
        }
    }
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(hydra, sort_keys=False))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run_dir


def write_multirun_yaml(sweep_dir: Path, base_config: dict[str, Any], task_overrides: list[str],
                        choices: dict[str, Any], sweeper: dict[str, Any] | None = None) -> Path:
    """Write ``multirun.yaml``: the base config plus the sweep's overrides as typed on the command line."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "hydra": {
            "sweep": {"dir": str(sweep_dir), "subdir": "${hydra.job.num}"},
            "sweeper": sweeper or {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                   "max_batch_size": None, "params": None},
            "mode": "MULTIRUN",
            "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": list(task_overrides)},
            "runtime": {"choices": {**choices, **HYDRA_CHOICES}},
        },
        **base_config,
    }
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return sweep_dir


def completed(acc: float, **extra: Any) -> dict[str, Any]:
    """metrics.json of a completed run with test/mean_class_acc = ``acc``."""
    return {"status": "completed", "test/acc": acc + 0.01, "test/mean_class_acc": acc, "test/top5": 0.99,
            "test/loss": round(1.0 - acc, 4), "val/best_mean_class_acc": acc - 0.01, "params/trainable": 1234,
            "params/total": 5678, "time/fit_s": 12.3, "throughput/train_img_s": 456.0, "epochs": 10, **extra}


def failed(error: str = "ConfigError: data.root '/nope' does not exist") -> dict[str, Any]:
    return {"status": "failed", "error": error}


# The grid of the main sweep: backbone x finetune x seed, in the order Hydra enumerates it.
# None: the job directory exists but has no metrics.json; "absent": no directory at all.
SWEEP_OUTCOMES: dict[tuple[str, str, int], Any] = {
    ("resnet50", "linear_probe", 0): completed(0.80),
    ("resnet50", "linear_probe", 1): completed(0.82),
    ("resnet50", "linear_probe", 2): completed(0.84),
    ("resnet50", "full", 0): completed(0.90),
    ("resnet50", "full", 1): completed(0.91),
    ("resnet50", "full", 2): failed(),
    ("vgg16", "linear_probe", 0): completed(0.70),
    ("vgg16", "linear_probe", 1): None,
    ("vgg16", "linear_probe", 2): "absent",
    ("vgg16", "full", 0): failed("RuntimeError: CUDA out of memory"),
    ("vgg16", "full", 1): failed(),
    ("vgg16", "full", 2): {"status": "interrupted", "val/best_mean_class_acc": 0.5},
}
SWEEP_TASK = ["backbone=resnet50,vgg16", "finetune=linear_probe,full", "seed=0,1,2", "trainer.max_epochs=10"]


class Fake:
    """The helpers above, handed to tests by the ``fake`` fixture (no test imports conftest:
    that breaks as soon as another tests/ folder has a conftest.py too)."""

    make_config = staticmethod(make_config)
    write_run = staticmethod(write_run)
    write_multirun_yaml = staticmethod(write_multirun_yaml)
    completed = staticmethod(completed)
    failed = staticmethod(failed)
    SWEEP_OUTCOMES = SWEEP_OUTCOMES
    SWEEP_TASK = SWEEP_TASK


@pytest.fixture
def fake() -> type[Fake]:
    return Fake


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """``multirun/2024-05-01/12-00-00`` with 12 expected jobs: 5 completed, 4 failed/interrupted,
    one without metrics.json and one with no directory at all (job 8)."""
    sweep = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    write_multirun_yaml(sweep, make_config(), SWEEP_TASK, {"backbone": "resnet50", "finetune": "linear_probe"})
    for num, ((backbone, finetune, seed), outcome) in enumerate(SWEEP_OUTCOMES.items()):
        if outcome == "absent":
            continue
        overrides = [f"backbone={backbone}", f"finetune={finetune}", f"seed={seed}", "trainer.max_epochs=10"]
        write_run(sweep / str(num), make_config(backbone, finetune, seed=seed), overrides,
                  {"backbone": backbone, "finetune": finetune}, outcome, job_num=num)
    return sweep
