"""Every study follows its recipe, point by point, and its README's recipe table says so.

* Each experiment (and each schedule of its grid) is composed and its model built as a run would
  build it (random weights, tiny inputs); the optimizer class, the LR of every parameter group in
  every stage of the schedule, the optimizer restarts, the protocol, the batch size and the
  budget are asserted against the values written below.
* Each ``experiments/<study>/README.md`` recipe table (after a ``<!-- recipe-table: OVERRIDES -->``
  marker) lists the recipe points; every backticked ``key=value`` in its last column must be what
  the config composed with OVERRIDES holds.
* ``lesson_cats_dogs`` is run for real on a tiny generated Cats vs Dogs: Adam, the LRs of each
  stage, the optimizer restart and the frozen first stage are observed during training.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from tests.helpers import compose_cfg
from tlresearch.core.instantiate import instantiate_node
from tlresearch.finetune.base import EpochLoopSettings
from tlresearch.finetune.logistic import LogisticSettings
from tlresearch.finetune.stages import enter_stage, schedule_group
from tlresearch.models.classifier import TransferClassifier
from tlresearch.runner.entry import config_dir
from tlresearch.train import train

REPO = config_dir().parent
STUDIES = ("lesson_cats_dogs", "pets_kornblith", "pets_bit_hyperrule", "pets_freeze_schedules", "peft_compare",
           "kornblith_suite", "vtab1k")
RESNET50_BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4"]
VIT_BLOCKS = [f"group{i}" for i in range(13)]  # a 12-block timm ViT: stem (patch and position embeddings), 12 blocks
VGG16_BLOCKS = ["stage1", "stage2", "stage3", "stage4", "stage5"]

#: The recipe points of each study (and grid point): what the config must say.
#: ``stages``: per stage, the LR of every parameter group that trains in it (``backbone.*``: every
#: backbone block at that LR); groups not listed are frozen. ``restarts``: per stage, whether
#: the optimizer starts afresh.
KORNBLITH = {
    "logistic": dict(
        optimizer=torch.optim.SGD, protocol=LogisticSettings, batch_size=256, stages=[{"head": 0.01}], restarts=[False],
        blocks=RESNET50_BLOCKS),
    "full": dict(
        optimizer=torch.optim.SGD, protocol=EpochLoopSettings, batch_size=256, max_epochs=-1, max_steps=20000,
        blocks=RESNET50_BLOCKS, stages=[{"head": 0.01, "backbone.*": 0.01}], restarts=[False], nesterov=True),
}
RECIPES = {
    ("lesson_cats_dogs", ""): dict(
        optimizer=torch.optim.Adam, protocol=EpochLoopSettings, batch_size=16, max_epochs=2, max_steps=-1,
        blocks=VGG16_BLOCKS, stages=[{"head": 0.01}, {"head": 1e-4, "backbone.*": 1e-4}], restarts=[False, True],
        starts=[0, 1]),
    # pets_kornblith's protocol; its refit and kornblith_suite (the protocol per dataset) follow it exactly
    **{(name, f"finetune={ft}"): recipe for name in ("pets_kornblith", "pets_kornblith_refit", "kornblith_suite")
       for ft, recipe in KORNBLITH.items() if (name, ft) != ("pets_kornblith_refit", "logistic")},
    ("pets_bit_hyperrule", ""): dict(
        optimizer=torch.optim.SGD, protocol=EpochLoopSettings, batch_size=512, max_epochs=-1, max_steps=500,
        stages=[{"head": 0.003, "backbone.*": 0.003}], restarts=[False], nesterov=False),
    ("pets_freeze_schedules", "finetune=linear_probe"): dict(
        optimizer=torch.optim.SGD, protocol=EpochLoopSettings, batch_size=64, max_epochs=30,
        blocks=RESNET50_BLOCKS, stages=[{"head": 0.01}], restarts=[False]),
    ("pets_freeze_schedules", "finetune=gradual"): dict(  # one block per epoch, from the top down
        optimizer=torch.optim.SGD, protocol=EpochLoopSettings, batch_size=64, max_epochs=30, blocks=RESNET50_BLOCKS,
        stages=[{"head": 0.01, **{f"backbone.{b}": 0.01 for b in RESNET50_BLOCKS[len(RESNET50_BLOCKS) - k:]}}
                for k in range(len(RESNET50_BLOCKS) + 1)],
        restarts=[False] * 6, starts=[0, 1, 2, 3, 4, 5]),
    ("pets_freeze_schedules", "finetune=layer_decay"): dict(  # block d below the head at 0.01 x 0.75^d
        optimizer=torch.optim.SGD, protocol=EpochLoopSettings, batch_size=64, max_epochs=30, blocks=RESNET50_BLOCKS,
        stages=[{"head": 0.01, **{f"backbone.{b}": 0.01 * 0.75 ** (5 - i) for i, b in enumerate(RESNET50_BLOCKS)}}],
        restarts=[False]),
    ("pets_freeze_schedules", "finetune=full"): dict(
        optimizer=torch.optim.SGD, protocol=EpochLoopSettings, batch_size=64, max_epochs=30, blocks=RESNET50_BLOCKS,
        stages=[{"head": 0.01, "backbone.*": 0.01}], restarts=[False]),
    ("vtab1k", "finetune=logistic"): dict(
        optimizer=torch.optim.SGD, protocol=LogisticSettings, batch_size=512, stages=[{"head": 0.01}], restarts=[False]),
    ("vtab1k", "finetune=full"): dict(
        optimizer=torch.optim.SGD, protocol=EpochLoopSettings, batch_size=512, max_epochs=-1, max_steps=2500,
        stages=[{"head": 0.01, "backbone.*": 0.01}], restarts=[False], nesterov=False),
    **{("peft_compare", f"finetune={m}"): dict(  # the head and the method's groups at one LR (1e-3)
        optimizer=torch.optim.AdamW, protocol=EpochLoopSettings, batch_size=64, max_epochs=20, blocks=VIT_BLOCKS,
        stages=[{"head": 1e-3, **{f"backbone.group{i}": 1e-3 for i in blocks}}], restarts=[False])
       for m, blocks in {"bitfit": range(13), "norm_tuning": range(1, 13), "lora": range(1, 13),
                         "vpt": range(1, 13), "linear_probe": ()}.items()},
    ("peft_compare", "finetune=full"): dict(
        optimizer=torch.optim.AdamW, protocol=EpochLoopSettings, batch_size=64, max_epochs=20, blocks=VIT_BLOCKS,
        stages=[{"head": 1e-3, "backbone.*": 1e-3}], restarts=[False]),
    ("demo", ""): dict(
        optimizer=torch.optim.AdamW, protocol=EpochLoopSettings, batch_size=32, max_epochs=8,
        stages=[{"head": 0.003, "backbone.*": 0.003}], restarts=[False]),
}


def test_every_experiment_and_schedule_of_its_grid_has_a_recipe():
    """A new experiment, or a new schedule in a grid, needs its recipe points written down here."""
    for path in (config_dir() / "experiment").glob("*.yaml"):
        grid = (yaml.safe_load(path.read_text()).get("hydra") or {}).get("sweeper", {}).get("params", {})
        schedules = str(grid.get("finetune", "")).split(",") if "finetune" in grid else [""]
        for schedule in schedules:
            assert (path.stem, f"finetune={schedule}" if schedule else "") in RECIPES, (path.stem, schedule)


def built(name: str, point: str, tmp_path: Path) -> tuple[DictConfig, TransferClassifier]:
    """The composed config and the classifier a run would build (random weights, 32 px inputs)."""
    cfg = compose_cfg("train", [f"+experiment={name}", *point.split()], tmp_path)
    backbone = {**OmegaConf.to_container(cfg.backbone, resolve=True), "weights": None, "input_size": 32}
    num_classes = 2 if cfg.data._target_.endswith("CatsDogsDataModule") else 37
    model = TransferClassifier(
        backbone=backbone, num_classes=num_classes, finetune=OmegaConf.to_container(cfg.finetune, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True), scheduler=None,
        **OmegaConf.to_container(cfg.model, resolve=True),
    )
    return cfg, model


def expected_lrs(stage: dict[str, float], groups: list[str]) -> dict[str, float]:
    return {g: stage[g] if g in stage else stage["backbone.*"] for g in groups
            if g in stage or (g.startswith("backbone.") and "backbone.*" in stage)}


@pytest.mark.parametrize("name, point", sorted(RECIPES), ids=lambda v: v or "default")
def test_recipe_points(name: str, point: str, tmp_path: Path) -> None:
    recipe = RECIPES[(name, point)]
    cfg, model = built(name, point, tmp_path)
    assert isinstance(model.schedule.protocol(), recipe["protocol"])
    assert cfg.data.batch_size == recipe["batch_size"]
    for key in ("max_epochs", "max_steps"):
        if key in recipe:
            assert cfg.trainer.get(key, -1) == recipe[key], key
    if "nesterov" in recipe:
        assert cfg.optimizer.nesterov is recipe["nesterov"]
    if "blocks" in recipe:
        assert [b.name for b in model.backbone.blocks] == recipe["blocks"]

    base_lr = float(cfg.optimizer.lr)
    optimizer = instantiate_node(OmegaConf.to_container(cfg.optimizer, resolve=True), "optimizer")(model.optimizer_param_groups(base_lr))
    assert type(optimizer) is recipe["optimizer"]
    names = [g.name for g in model.groups]
    assert len(model.stages) == len(recipe["stages"]) and [s.restart_optimizer for s in model.stages] == recipe["restarts"]
    if "starts" in recipe:
        assert [s.start_epoch for s in model.stages] == recipe["starts"]
    for index, (stage, wanted) in enumerate(zip(model.stages, recipe["stages"])):
        model.apply_schedule(stage.start_epoch)
        enter_stage(optimizer, None, model.stages, index, base_lr)
        training = {g.name for g in model.groups if all(p.requires_grad for p in g.params)}
        lrs = {schedule_group(pg): pg["lr"] for pg in optimizer.param_groups if schedule_group(pg) in training}
        assert lrs == pytest.approx(expected_lrs(wanted, names)), f"stage {index}"


# ---------------------------------------------------------------------------------- README tables

MARKER = re.compile(r"<!-- recipe-table: (.*?) -->\n((?:\|.*\n)+)")
INHERITS = re.compile(r"<!-- recipe-tables-of: (\w+) -->")
CHECK = re.compile(r"^([A-Za-z_][\w.]*)=(.+)$")
REQUIRED_POINTS = ("optimizer", "LR and schedule", "batch size", "steps / epochs", "augmentation", "resolution",
                   "weight decay", "head init", "BN handling", "splits", "metric")
CHECKED_POINTS = ("optimizer", "LR and schedule", "batch size", "steps / epochs")
_MISSING = object()


def recipe_tables(readme: str) -> list[tuple[list[str], dict[str, list[tuple[str, str]]]]]:
    """``[(overrides, {recipe point: [(key, value) checks of its config column]})]`` of a README."""
    tables = []
    for overrides, body in MARKER.findall(readme):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()[2:]]
        assert all(len(r) == 3 for r in rows), [r for r in rows if len(r) != 3]
        checks = {r[0]: [m.groups() for t in re.findall(r"`([^`]+)`", r[2]) if (m := CHECK.match(t))] for r in rows}
        tables.append((overrides.split(), checks))
    return tables


def config_value(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default=_MISSING)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def same(stated, actual) -> bool:
    if isinstance(stated, (int, float)) and not isinstance(stated, bool) and isinstance(actual, (int, float)):
        return actual == pytest.approx(stated)
    return stated == actual


@pytest.mark.parametrize("name", STUDIES)
def test_readme_recipe_table_states_what_the_config_holds(name: str, tmp_path: Path) -> None:
    tables = recipe_tables((REPO / "experiments" / name / "README.md").read_text())
    for base in INHERITS.findall((REPO / "experiments" / name / "README.md").read_text()):
        # a study that extends another states the base's tables once; they must hold for it too
        base_tables = recipe_tables((REPO / "experiments" / base / "README.md").read_text())
        tables += [([o.replace(f"+experiment={base}", f"+experiment={name}") for o in overrides], checks)
                   for overrides, checks in base_tables]
    assert tables, f"experiments/{name}/README.md has no recipe table"
    for overrides, checks in tables:
        assert f"+experiment={name}" in overrides
        assert set(REQUIRED_POINTS) <= set(checks), sorted(set(REQUIRED_POINTS) - set(checks))
        assert all(checks[p] for p in CHECKED_POINTS), [p for p in CHECKED_POINTS if not checks[p]]
        cfg = compose_cfg("train", overrides, tmp_path)
        OmegaConf.resolve(cfg)
        for point, pairs in checks.items():
            for key, text in pairs:
                actual = config_value(cfg, key)
                assert actual is not _MISSING, f"{point}: `{key}` is no config key"
                assert same(yaml.safe_load(text), actual), f"{' '.join(overrides)} / {point}: README says {key}={text}, config {actual!r}"


def test_a_readme_that_misstates_its_config_is_caught(tmp_path: Path) -> None:
    readme = (REPO / "experiments" / "lesson_cats_dogs" / "README.md").read_text()
    (overrides, checks), = recipe_tables(readme.replace("`data.batch_size=16`", "`data.batch_size=32`"))
    cfg = compose_cfg("train", overrides, tmp_path)
    assert not all(same(yaml.safe_load(text), config_value(cfg, key)) for key, text in checks["batch size"])


# ---------------------------------------------------------------------------------- the lesson, for real


@pytest.mark.slow
def test_lesson_runs_its_two_stages_with_adam_and_a_fresh_optimizer(cats_dogs_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg("train", ["+experiment=lesson_cats_dogs", f"data.root={cats_dogs_root}", "backbone.weights=null",
                                "backbone.input_size=32", "data.batch_size=8", "data.num_workers=0",
                                "trainer.enable_progress_bar=false", "+callbacks.probe._target_=tests.probes.OptimizerProbe"],
                      tmp_path)
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    probe = next(c for c in trainer.callbacks if type(c).__name__ == "OptimizerProbe")
    assert type(trainer.optimizers[0]) is torch.optim.Adam
    assert metrics["status"] == "completed" and metrics["epochs"] == 2 and 0 <= metrics["test/acc"] <= 1
    steps = metrics["global_step"] // 2  # per epoch
    assert steps >= 2 and sorted(probe.lrs) == list(range(2 * steps))
    blocks = [f"backbone.{b}" for b in VGG16_BLOCKS]

    # Stage 0 (epoch 0): Adam at 0.01 on the head alone; the frozen backbone has no optimizer state.
    for step in range(steps):
        assert probe.lrs[step]["head"] == pytest.approx(0.01)
        assert probe.state_steps[step]["head"] == (step or None) and all(probe.state_steps[step][b] is None for b in blocks)
    start, after_stage0, end = probe.backbone["start"], probe.backbone["epoch0"], probe.backbone["epoch1"]
    assert all(torch.equal(start[n], after_stage0[n]) for n in start)  # frozen: bitwise unchanged
    # Stage 1 (epoch 1): every group at 1e-4 from a fresh optimizer (no state at its first step).
    for step in range(steps, 2 * steps):
        assert probe.lrs[step] == pytest.approx(dict.fromkeys(["head", *blocks], 1e-4))
        assert set(probe.state_steps[step].values()) == {(step - steps) or None}
    assert any(not torch.equal(after_stage0[n], end[n]) for n in start)  # the backbone trained in stage 1


@pytest.mark.slow
def test_kornblith_fine_tune_scores_its_final_weights_once(pets_root: Path, tmp_path: Path) -> None:
    """The step budget ends mid-epoch; validation runs once, after the last step, and the weights
    tested are the final ones (the paper selects no checkpoint)."""
    cfg = compose_cfg("train", ["+experiment=pets_kornblith", "finetune=full", f"data.root={pets_root}", "backbone=resnet18",
                                "backbone.weights=null", "backbone.input_size=32", "data.batch_size=8", "data.val_per_class=2",
                                "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
                                "trainer.max_steps=4"], tmp_path)
    metrics, _ = train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv", newline="")))
    assert [r["step"] for r in rows if r.get("val/mean_class_acc")] == ["3"]  # 24 training images / 8: 3 steps per epoch
    assert metrics["global_step"] == 4 and "val/mean_class_acc" in metrics and "val/best_mean_class_acc" not in metrics
    assert torch.load(metrics["test/checkpoint"], weights_only=True)["global_step"] == 4
