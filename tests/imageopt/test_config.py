"""The visualize config and its presets compose into the recipes they promise."""

from __future__ import annotations

import re

import pytest

from tlresearch.imageopt.attacks import AttackSettings
from tlresearch.imageopt.ideal import IdealSettings
from tlresearch.runner.entry import config_dir
from tlresearch.visualize import task_settings

from .conftest import compose_visualize


def settings(tmp_path, *overrides):
    cfg = compose_visualize(list(overrides), tmp_path)
    return cfg, task_settings(cfg)


def test_lesson_preset_is_the_ai_for_beginners_recipe(tmp_path):
    cfg, ideal = settings(tmp_path, "preset=lesson", "task=ideal")
    assert cfg.backbone.name == "vgg16" and cfg.backbone.weights == "DEFAULT"
    assert isinstance(ideal, IdealSettings)
    assert (ideal.parameterization, ideal.init, ideal.steps) == ("pixel", "uniform", 2000)
    assert (ideal.objective, ideal.objective_weight) == ("cross_entropy", 10.0)
    assert (ideal.optimizer.name, ideal.optimizer.lr, ideal.optimizer.momentum) == ("sgd", 1.0, 0.0)
    regs = ideal.regularizers
    assert (regs.tv, regs.reduction) == (0.005, "sum")
    assert not regs.active_at(999, ideal.steps) and regs.active_at(1000, ideal.steps)  # TV in the second 1000 steps
    assert not ideal.transforms.enabled

    _, attack = settings(tmp_path, "preset=lesson", "task=adversarial")
    assert isinstance(attack, AttackSettings)
    assert (attack.method, attack.steps, attack.optimizer.name, attack.optimizer.lr) == ("lesson", 100, "sgd", 1.0)
    assert attack.regularizers.tv == 0.0 and not attack.early_stop


def test_quality_preset_is_lucids_recipe(tmp_path):
    cfg, ideal = settings(tmp_path, "preset=quality")
    assert cfg.task == "ideal"
    assert (ideal.parameterization, ideal.decorrelate, ideal.transforms.enabled) == ("fft", True, True)
    assert (ideal.optimizer.name, ideal.optimizer.lr, ideal.steps) == ("adam", 0.05, 512)


def test_pgd_preset_and_the_steps_shortcut(tmp_path):
    cfg, attack = settings(tmp_path, "preset=pgd")
    assert cfg.task == "adversarial"
    assert (attack.method, attack.norm, attack.steps, attack.random_start) == ("pgd", "linf", 40, True)
    assert attack.eps == pytest.approx(4 / 255) and attack.alpha == pytest.approx(1 / 255)
    _, shorter = settings(tmp_path, "preset=pgd", "steps=7", "backbone=resnet18")
    assert shorter.steps == 7


def test_a_second_backbone_is_selected_into_check_backbone(tmp_path):
    cfg = compose_visualize(["backbone@check_backbone=resnet18", "check_backbone.weights=null"], tmp_path)
    assert cfg.check_backbone.name == "resnet18" and cfg.check_backbone.weights is None
    assert cfg.backbone.name == "resnet50"


@pytest.mark.parametrize("name", ["visualize.yaml", "preset/lesson.yaml", "preset/quality.yaml", "preset/pgd.yaml"])
def test_every_config_key_is_commented(name):
    lines = (config_dir() / name).read_text().splitlines()
    keys = [line for line in lines if re.match(r"^\s*[\w@/-]+:", line) and not line.strip().startswith("#")]
    uncommented = [line for line in keys if "#" not in line]
    assert not uncommented, uncommented
