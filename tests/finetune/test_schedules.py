"""Freeze schedules are pure descriptions: groups, start epochs, LR scales."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlresearch.core.errors import ConfigError
from tlresearch.finetune.full import FullFinetune
from tlresearch.finetune.gradual import GradualUnfreeze
from tlresearch.finetune.layer_decay import LayerDecay
from tlresearch.finetune.linear_probe import LinearProbe

HEAD = [nn.Parameter(torch.zeros(2))]
BLOCKS = [(f"b{i}", [nn.Parameter(torch.zeros(1))]) for i in range(4)]  # b0 = stem ... b3 = last


def by_name(schedule):
    return {g.name: g for g in schedule.groups(HEAD, BLOCKS)}


def test_linear_probe_trains_only_the_head():
    groups = by_name(LinearProbe())
    assert groups["head"].start_epoch == 0
    assert all(groups[f"backbone.b{i}"].start_epoch is None for i in range(4))


def test_full_trains_everything_at_the_backbone_multiplier():
    groups = by_name(FullFinetune(backbone_lr_mult=0.1))
    assert all(groups[f"backbone.b{i}"].start_epoch == 0 and groups[f"backbone.b{i}"].lr_scale == 0.1 for i in range(4))


def test_gradual_unfreezes_top_down():
    groups = by_name(GradualUnfreeze(start_epoch=2, every=3, blocks_per_step=2, max_blocks=3))
    assert [groups[f"backbone.b{i}"].start_epoch for i in range(4)] == [None, 5, 2, 2]
    assert groups["backbone.b3"].trains_at(2) and not groups["backbone.b2"].trains_at(1)


def test_layer_decay_lr_decays_towards_the_stem():
    groups = by_name(LayerDecay(decay=0.5))
    assert [groups[f"backbone.b{i}"].lr_scale for i in range(4)] == [0.0625, 0.125, 0.25, 0.5]
    assert groups["head"].lr_scale == 1.0


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: GradualUnfreeze(start_epoch=0), "finetune.start_epoch"),
        (lambda: GradualUnfreeze(every=0), "finetune.every"),
        (lambda: LayerDecay(decay=1.5), "finetune.decay"),
        (lambda: FullFinetune(backbone_lr_mult=-1), "finetune.backbone_lr_mult"),
    ],
)
def test_bad_schedule_settings_name_the_key(make, key):
    with pytest.raises(ConfigError, match=key):
        make()
