"""data.augment.enabled=auto: a linear probe is the literature's (unaugmented, cached) unless the
user opts in; fine-tuning augments; the log and metrics.json say which protocol ran."""

from __future__ import annotations

import json
import logging

import pytest
from torchvision.transforms import v2 as T

from tests.helpers import FAST, compose_cfg
from tlresearch.core.errors import ConfigError
from tlresearch.core.instantiate import instantiate_node
from tlresearch.protocols.cached_data import CachedFeatureDataModule
from tlresearch.protocols.context import RunContext
from tlresearch.protocols.epoch_loop import run_epoch_loop
from tlresearch.train import build_classifier, train

LOGGER = "tlresearch.protocols.epoch_loop"


def augments(datamodule) -> bool:
    """Whether the training split's transform is a random one (a RandomResizedCrop in it)."""
    return any(isinstance(t, T.RandomResizedCrop) for t in datamodule.dataset("train").transform.transforms)


@pytest.mark.slow
def test_default_linear_probe_trains_on_cached_unaugmented_features(folder_root, tmp_path, caplog):
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}", "finetune=linear_probe",
                                "trainer.max_epochs=1", f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    assert cfg.data.augment.enabled == "auto"  # the default of every data config
    with caplog.at_level(logging.INFO, logger=LOGGER):
        metrics, objects = train(cfg)
    cached = objects["datamodule"]
    assert isinstance(cached, CachedFeatureDataModule) and cached.views == 0
    assert cached.images.augmentation.enabled is False and not augments(cached.images)
    expected = "linear_probe on cached features, no augmentation (data.augment.enabled=auto: the backbone is frozen)"
    assert metrics["protocol"] == expected
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"] == expected
    assert f"Protocol: {expected}." in caplog.text


@pytest.mark.parametrize(
    "overrides, cached, augmented, protocol",
    [
        (["finetune=linear_probe"], True, False,
         "linear_probe on cached features, no augmentation (data.augment.enabled=auto: the backbone is frozen)"),
        (["finetune=linear_probe", "data.augment.enabled=true"], False, True,
         "linear_probe on images, augmented (data.augment.enabled=true)"),
        (["finetune=linear_probe", "data.augment.enabled=false"], True, False,
         "linear_probe on cached features, no augmentation (data.augment.enabled=false)"),
        (["finetune=linear_probe", "finetune.cache_views=2"], True, True,
         "linear_probe on cached features, 2 cached augmented views per training image "
         "(data.augment.enabled=auto with finetune.cache_views=2)"),
        (["finetune=linear_probe", "finetune.cache_features=false"], False, False,
         "linear_probe on images, no augmentation (data.augment.enabled=auto: the backbone is frozen)"),
        (["finetune=full"], False, True, "full on images, augmented (data.augment.enabled=auto: backbone blocks train)"),
        (["finetune=gradual"], False, True, "gradual on images, augmented (data.augment.enabled=auto: backbone blocks train)"),
        (["finetune=gradual", "finetune.max_blocks=0"], True, False,  # a backbone that never unfreezes is a probe
         "gradual on cached features, no augmentation (data.augment.enabled=auto: the backbone is frozen)"),
        (["finetune=full", "data.augment.enabled=false"], False, False,
         "full on images, no augmentation (data.augment.enabled=false)"),
    ],
)
def test_the_protocol_settles_auto_augmentation_and_says_what_ran(overrides, cached, augmented, protocol,
                                                                   folder_root, tmp_path, caplog):
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}", *overrides], tmp_path)
    images = instantiate_node(cfg.data, "data")
    model = build_classifier(cfg, images.num_classes, images.classes)
    images.set_preprocessing(model.backbone.preprocessing)
    images.setup()  # datasets built before the protocol runs (as provenance does) get the settled transform
    context = RunContext(output_dir=tmp_path, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        metrics, used = run_epoch_loop(model.schedule.protocol(), context, model, images, lambda data: {"fit": True})
    assert isinstance(used, CachedFeatureDataModule) is cached
    assert images.augmentation.active is augmented and augments(images) is augmented
    assert metrics == {"fit": True, "protocol": protocol}
    assert f"Protocol: {protocol}." in caplog.text
    if overrides[-1] == "data.augment.enabled=true":  # the cache was skipped, and the log says why
        assert "Feature cache not used: training augmentation is on (data.augment.enabled=true)" in caplog.text


def test_augment_enabled_takes_true_false_or_auto(folder_root, tmp_path):
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}", "data.augment.enabled=sometimes"], tmp_path)
    with pytest.raises(ConfigError, match="data.augment.enabled='sometimes' is invalid: use true, false or auto"):
        instantiate_node(cfg.data, "data")
