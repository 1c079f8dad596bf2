"""Every experiment config composes, every grid point of its sweep too, and the recipes say
what their READMEs claim (without training them fully)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import FAST, compose_cfg
from tlresearch.results.records import expand_grid
from tlresearch.runner.entry import config_dir

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
REPO = config_dir().parent
STUDIES = ("lesson_cats_dogs", "pets_kornblith", "pets_bit_hyperrule", "pets_freeze_schedules", "kornblith_suite", "vtab1k",
           "peft_compare")



def sweep_grid(name: str, tmp_path: Path) -> list[list[str]]:
    """The jobs ``-m +experiment=<name>`` runs (its ``hydra.sweeper.params`` expanded), seeds left out."""
    compose_cfg("train", [f"+experiment={name}"], tmp_path)
    params = HydraConfig.get().sweeper.params or {}
    axes = {k: str(v).split(",") for k, v in params.items() if k != "seed"}
    if len(expand_grid([f"{k}={v}" for k, v in params.items() if k != "seed"])) > 12:
        # a suite's large grid: each value of each axis once (around the first point), not every product
        first = {k: vs[0] for k, vs in axes.items()}
        grid = [[f"{k}={v}" for k, v in {**first, axis: value}.items()] for axis, vs in axes.items() for value in vs]
    else:
        grid = expand_grid([f"{k}={','.join(vs)}" for k, vs in axes.items()])
    return grid or [[]]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_and_each_grid_point_compose(name: str, tmp_path: Path) -> None:
    for point in sweep_grid(name, tmp_path):
        cfg = compose_cfg("train", [f"+experiment={name}", *point], tmp_path)
        resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        schedule = instantiate(cfg.finetune)  # e.g. the experiment's finetune keys fit each schedule of the grid
        assert schedule.name, point
        assert resolved["data"]["_target_"] and resolved["backbone"]["name"]
        optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        instantiate(cfg.scheduler)(optimizer, total_steps=100, steps_per_epoch=10.0) if cfg.get("scheduler") else None


@pytest.mark.parametrize("name", STUDIES)
def test_each_study_has_a_readme_with_its_command(name: str) -> None:
    readme = (REPO / "experiments" / name / "README.md").read_text()
    assert f"+experiment={name}" in readme and "python -m tlresearch.table" in readme


def test_bit_hyperrule_recipe(tmp_path: Path) -> None:
    cfg = compose_cfg("train", ["+experiment=pets_bit_hyperrule"], tmp_path)
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.003, 0.9, 0.0)
    assert cfg.data.batch_size == 512 and cfg.model.head_init == "zero" and cfg.trainer.max_steps == 500
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=500, steps_per_epoch=7.0)
    factors = {}
    for step in range(500):
        factors[step] = optimizer.param_groups[0]["lr"] / 0.003
        optimizer.step()
        scheduler.step()
    assert factors[0] == pytest.approx(0.01) and factors[99] == pytest.approx(1.0)  # 100 warm-up steps
    assert [round(factors[s], 6) for s in (199, 200, 299, 300, 399, 400, 499)] == [1.0, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_kornblith_selection_then_refit(tmp_path: Path) -> None:
    select = compose_cfg("train", ["+experiment=pets_kornblith"], tmp_path)
    refit = compose_cfg("train", ["+experiment=pets_kornblith_refit", "optimizer.lr=0.03"], tmp_path)
    # The paper scores a setting by its final weights: no checkpoint selection in either step.
    assert select.data.val_per_class == 20 and select.callbacks.model_checkpoint.monitor is None
    assert select.optimized_metric == "val/mean_class_acc" and select.trainer.val_check_interval == select.trainer.max_steps
    assert refit.data.val_per_class == 0 and refit.callbacks.model_checkpoint.monitor is None and refit.optimized_metric is None
    assert refit.optimizer.lr == 0.03 and refit.optimizer.nesterov and refit.backbone.weights == "IMAGENET1K_V1"


@pytest.mark.slow
def test_bit_hyperrule_runs_by_steps_without_a_validation_split(pets_root: Path, tmp_path: Path) -> None:
    """A few steps of the step-budgeted, validation-free recipe on a tiny network."""
    from tlresearch.train import train

    cfg = compose_cfg("train", ["+experiment=pets_bit_hyperrule", *FAST, "backbone.name=resnet18", f"data.root={pets_root}",
                                "data.batch_size=8", "trainer.max_steps=5", "scheduler.warmup_steps=2",
                                "scheduler.milestone_steps=[3]"], tmp_path)
    metrics, objects = train(cfg)
    assert metrics["status"] == "completed" and metrics["global_step"] == 5
    assert len(objects["datamodule"].dataset("val")) == 0  # all of trainval trains
    assert not any(k.startswith("val/") for k in metrics)
    assert metrics["test/checkpoint"].endswith(".ckpt") and 0 <= metrics["test/mean_class_acc"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 5
