"""Explicit stages (finetune=stages): selectors resolve to groups, bad stages are refused by key,
and entering a stage sets every group's LR and restarts the optimizer exactly once, also across a
resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from torch import nn

from tests.helpers import FAST, compose_cfg
from tests.test_resume import assert_same_tensors, read_last
from tlresearch.core.errors import ConfigError
from tlresearch.finetune.base import Stage
from tlresearch.finetune.gradual import GradualUnfreeze
from tlresearch.finetune.stages import RESTARTED_AT, StagedSchedule, enter_stage
from tlresearch.models.schedulers import cosine
from tlresearch.train import train

HEAD = [nn.Parameter(torch.zeros(2))]
BLOCKS = [(f"b{i}", [nn.Parameter(torch.zeros(1))]) for i in range(4)]  # b0 = stem ... b3 = last
LESSON_LIKE = [
    {"start_epoch": 0, "lr_scales": {"head": 1.0}},
    {"start_epoch": 2, "lr_scales": {"head": 0.5, "backbone": 0.1, "backbone.b3": 0.2}, "restart_optimizer": True},
]


def test_selectors_resolve_to_groups_and_a_blocks_own_entry_wins():
    schedule = StagedSchedule(LESSON_LIKE)
    groups = {g.name: g for g in schedule.groups(HEAD, BLOCKS)}
    assert (groups["head"].start_epoch, groups["head"].lr_scale) == (0, 1.0)
    assert [(groups[f"backbone.b{i}"].start_epoch, groups[f"backbone.b{i}"].lr_scale) for i in range(4)] == [
        (2, 0.1), (2, 0.1), (2, 0.1), (2, 0.2)]
    stages = schedule.stages(list(groups.values()))
    assert stages == [
        Stage(0, {"head": 1.0}),
        Stage(2, {"head": 0.5, "backbone.b0": 0.1, "backbone.b1": 0.1, "backbone.b2": 0.1, "backbone.b3": 0.2}, True),
    ]
    assert schedule.describe() == {"name": "stages", "stages_spec": [
        {"start_epoch": 0, "lr_scales": {"head": 1.0}, "restart_optimizer": False}, {**LESSON_LIKE[1]}]}


def test_a_block_that_never_trains_has_no_start_epoch():
    groups = {g.name: g for g in StagedSchedule([{"start_epoch": 0, "lr_scales": {"head": 1, "backbone.b3": 1}}]).groups(HEAD, BLOCKS)}
    assert groups["backbone.b3"].start_epoch == 0 and groups["backbone.b0"].start_epoch is None


def test_other_schedules_get_one_stage_per_unfreezing_epoch_at_their_own_scales():
    schedule = GradualUnfreeze(start_epoch=2, every=3, blocks_per_step=2, max_blocks=3, backbone_lr_mult=0.1)
    stages = schedule.stages(schedule.groups(HEAD, BLOCKS))
    assert [(s.start_epoch, sorted(s.lr_scales), s.restart_optimizer) for s in stages] == [
        (0, ["head"], False), (2, ["backbone.b2", "backbone.b3", "head"], False),
        (5, ["backbone.b1", "backbone.b2", "backbone.b3", "head"], False)]
    assert stages[2].lr_scales == {"head": 1.0, "backbone.b1": 0.1, "backbone.b2": 0.1, "backbone.b3": 0.1}


@pytest.mark.parametrize(
    "stages, key",
    [
        ([], "finetune.stages"),
        ([{"start_epoch": 1, "lr_scales": {"head": 1}}], "finetune.stages.0.start_epoch"),
        ([{"start_epoch": 0, "lr_scales": {"head": 1}}, {"start_epoch": 0, "lr_scales": {"head": 1}}], "finetune.stages.1.start_epoch"),
        ([{"start_epoch": 0, "lr_scales": {"head": 0}}], "finetune.stages.0.lr_scales.head"),
        ([{"start_epoch": 0, "lr_scales": {}}], "finetune.stages.0.lr_scales"),
        ([{"start_epoch": 0, "lr_scales": {"head": 1}, "restart_optimizer": "yes"}], "finetune.stages.0.restart_optimizer"),
        ([{"start_epoch": 0, "lr_scales": {"head": 1}, "restart": True}], "finetune.stages.0.restart"),
    ],
)
def test_bad_stages_name_the_key(stages, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        StagedSchedule(stages)


def test_unknown_groups_and_groups_frozen_again_are_refused_when_the_blocks_are_known():
    with pytest.raises(ConfigError, match=r"finetune\.stages\.0\.lr_scales\.backbone\.b9 names no parameter group.*backbone\.b3"):
        StagedSchedule([{"start_epoch": 0, "lr_scales": {"head": 1, "backbone.b9": 1}}]).groups(HEAD, BLOCKS)
    refreeze = [{"start_epoch": 0, "lr_scales": {"head": 1, "backbone": 1}}, {"start_epoch": 1, "lr_scales": {"head": 1}}]
    with pytest.raises(ConfigError, match=r"finetune\.stages\.1\.lr_scales.*backbone\.b0.*must keep training"):
        StagedSchedule(refreeze).groups(HEAD, BLOCKS)


# ------------------------------------------------------------------------- entering a stage

STAGES = [Stage(0, {"head": 1.0}), Stage(1, {"head": 0.1, "backbone.b0": 0.1}, restart_optimizer=True)]


def adam_with_cosine() -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR, list[nn.Parameter]]:
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.Adam([{"params": [params[0]], "lr": 0.1, "name": "head"},
                                  {"params": [params[1]], "lr": 0.01, "name": "backbone.b0"}])
    return optimizer, cosine(optimizer, total_steps=10, steps_per_epoch=5.0), params


def step(optimizer, scheduler, params, trains=(0,)) -> None:
    for i, p in enumerate(params):
        p.grad = torch.ones_like(p) if i in trains else None
    optimizer.step()
    scheduler.step()


def test_entering_a_stage_sets_each_groups_lr_under_the_schedule_and_restarts_once():
    optimizer, scheduler, params = adam_with_cosine()
    for _ in range(3):  # stage 0: the head alone
        step(optimizer, scheduler, params)
    factor = scheduler.lr_lambdas[0](3)
    assert optimizer.state[params[0]]["step"] == 3 and params[1] not in optimizer.state
    before = {k: v.clone() for k, v in optimizer.state[params[0]].items()}

    changes = enter_stage(optimizer, scheduler, STAGES, 1, base_lr=0.1)
    assert scheduler.base_lrs == pytest.approx([0.01, 0.01]) and [g["initial_lr"] for g in optimizer.param_groups] == scheduler.base_lrs
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * factor)  # the cosine shape carries on
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * factor)  # already at its scale: unchanged
    assert params[0] not in optimizer.state and "head lr x0.1" in changes and "head optimizer state cleared" in changes
    step(optimizer, scheduler, params, trains=(0, 1))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * scheduler.lr_lambdas[0](4))
    assert optimizer.state[params[0]]["step"] == 1 and not torch.equal(optimizer.state[params[0]]["exp_avg"], before["exp_avg"])

    # Entering the same stage again (a resumed run does) changes nothing: no second restart.
    state = {k: v.clone() for k, v in optimizer.state[params[0]].items()}
    assert enter_stage(optimizer, scheduler, STAGES, 1, base_lr=0.1) == []
    assert torch.equal(optimizer.state[params[0]]["exp_avg"], state["exp_avg"]) and optimizer.state[params[0]]["step"] == 1


def test_a_resumed_optimizer_restarts_only_if_its_checkpoint_predates_the_stage():
    optimizer, scheduler, params = adam_with_cosine()
    step(optimizer, scheduler, params)
    before_boundary = (optimizer.state_dict(), scheduler.state_dict())
    enter_stage(optimizer, scheduler, STAGES, 1, base_lr=0.1)
    step(optimizer, scheduler, params, trains=(0, 1))
    after_boundary = (optimizer.state_dict(), scheduler.state_dict())
    assert [g[RESTARTED_AT] for g in after_boundary[0]["param_groups"]] == [1, 1]

    for saved, cleared in ((after_boundary, False), (before_boundary, True)):
        resumed, resumed_scheduler, resumed_params = adam_with_cosine()
        resumed.load_state_dict(saved[0])
        resumed_scheduler.load_state_dict(saved[1])
        changes = enter_stage(resumed, resumed_scheduler, STAGES, 1, base_lr=0.1)
        assert (resumed_params[0] not in resumed.state) is cleared, changes
        assert resumed_scheduler.base_lrs == pytest.approx([0.01, 0.01])


# ------------------------------------------------------------------------- a real run, resumed

STAGED = [*FAST, "data=folder", "data.batch_size=4", "backbone.input_size=32", "trainer.deterministic=true",
          "finetune=stages", "optimizer=adam", "scheduler=cosine", "callbacks.model_checkpoint.monitor=null",
          "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1",
          "callbacks.model_checkpoint.filename='step{step:03d}'"]


def run(folder_root: Path, out: Path, *extra: str) -> dict:
    cfg = compose_cfg("train", [*STAGED, f"data.root={folder_root}", *extra], out)
    with open_dict(cfg):  # the head alone, then layer4 at 0.5x and the head at 0.1x with a fresh Adam
        cfg.finetune.stages = [{"start_epoch": 0, "lr_scales": {"head": 1.0}},
                               {"start_epoch": 1, "lr_scales": {"head": 0.1, "backbone.layer4": 0.5}, "restart_optimizer": True}]
    metrics, _ = train(cfg)
    return metrics


@pytest.mark.slow
def test_a_run_resumed_before_or_after_the_stage_boundary_ends_as_the_uninterrupted_one(folder_root, tmp_path):
    """18 training images in batches of 4: 5 steps per epoch. The checkpoint of step 5 predates the
    restart (stage 1 starts with epoch 1); step 7's follows it, and a resume must not restart again."""
    reference = run(folder_root, tmp_path / "reference")
    assert reference["global_step"] == 10
    expected = read_last(tmp_path / "reference")
    for at in (5, 7):
        checkpoint = tmp_path / "reference" / "checkpoints" / f"step{at:03d}.ckpt"
        resumed = run(folder_root, tmp_path / f"resumed{at}", f"ckpt_path={checkpoint}")
        assert resumed["global_step"] == 10
        final = read_last(tmp_path / f"resumed{at}")
        assert_same_tensors(final["state_dict"], expected["state_dict"], f"state_dict (resumed at {at})")
        assert_same_tensors(final["optimizer_states"], expected["optimizer_states"], f"optimizer (resumed at {at})")
        assert_same_tensors(final["lr_schedulers"], expected["lr_schedulers"], f"lr_scheduler (resumed at {at})")
    groups = {g["name"]: g for g in expected["optimizer_states"][0]["param_groups"]}
    # optimizer=adam's lr 1e-3: stage 1 puts the head at 1e-4 and layer4 at 5e-4.
    assert groups["head"]["initial_lr"] == pytest.approx(1e-4) and groups["backbone.layer4"]["initial_lr"] == pytest.approx(5e-4)
    assert groups["head"][RESTARTED_AT] == 1
