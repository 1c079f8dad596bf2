"""Each conf/backbone/*.yaml builds through its family's own factory; old checkpoints' configs still build."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose_cfg
from tlresearch.core.instantiate import instantiate_node

#: What checkpoints written before the families had their own files store as ``backbone``.
LEGACY_TARGET = "tlresearch.models.backbones.create_backbone"


def composed_backbone(tmp_path, *overrides: str) -> dict:
    cfg = compose_cfg("train", list(overrides), tmp_path)
    return OmegaConf.to_container(cfg.backbone, resolve=True)


@pytest.mark.parametrize(
    "overrides, target, source",
    [
        (["backbone=resnet18"], "tlresearch.models.torchvision_backbones.create_backbone", "torchvision"),
        (["backbone=timm", "backbone.name=resnet18"], "tlresearch.models.timm_backbones.create_backbone", "timm"),
    ],
)
def test_a_backbone_config_names_its_familys_factory_and_an_old_checkpoints_config_builds_the_same(
    tmp_path, overrides, target, source
):
    current = composed_backbone(tmp_path, *overrides, "backbone.weights=null", "backbone.input_size=64")
    assert current["_target_"] == target and "source" not in current
    built = instantiate_node(current, "backbone")

    legacy = {**current, "_target_": LEGACY_TARGET, "source": source}
    torch.manual_seed(0)
    old = instantiate_node(legacy, "backbone")
    assert old.describe() == built.describe() and old.describe()["source"] == source
    assert old.preprocessing == built.preprocessing and old.preprocessing.crop_size == 64
    assert [b.name for b in old.blocks] == [b.name for b in built.blocks]
    assert {n: p.shape for n, p in old.state_dict().items()} == {n: p.shape for n, p in built.state_dict().items()}
