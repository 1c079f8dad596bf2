"""Every backbone config honours one contract; the pretrained path runs offline."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from tlresearch.core.errors import ConfigError
from tlresearch.models.backbones import create_backbone
from tlresearch.models.torchvision_backbones import create_backbone as torchvision_backbone
from tlresearch.runner.entry import config_dir

TORCHVISION_CONFIGS = sorted(
    p.stem for p in (config_dir() / "backbone").glob("*.yaml") if not p.stem.startswith("_") and "- _torchvision" in p.read_text()
)


def test_every_required_backbone_has_a_config():
    required = {"vgg16", "vgg19", "resnet18", "resnet50", "resnet101", "mobilenet_v2", "mobilenet_v3_large",
                "efficientnet_b0", "convnext_tiny", "vit_b_16"}
    assert required <= set(TORCHVISION_CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_CONFIGS)
def test_torchvision_backbone_contract(name):
    bb = create_backbone(name, weights=None)
    size = bb.preprocessing.crop_size if name.startswith("vit") else 64
    with torch.no_grad():
        feats = bb.eval()(torch.randn(2, 3, size, size))
    assert feats.shape == (2, bb.num_features)
    # blocks partition the parameters, ordered stem -> last stage
    owned = [n for b in bb.blocks for n, _ in bb.model.named_parameters() if b.owns(n)]
    all_names = [n for n, _ in bb.model.named_parameters()]
    assert sorted(owned) == sorted(all_names), "every parameter in exactly one block"
    assert len(bb.blocks) >= 3
    first_param = all_names[0]
    assert bb.blocks[0].owns(first_param) or name.startswith("vit")
    # the ImageNet head is kept aside with its class names
    assert bb.pretrained_head.out_features == 1000 and len(bb.pretrained_classes) == 1000
    assert bb.preprocessing.crop_size == 224 and len(bb.preprocessing.mean) == 3


def test_timm_backbone_contract():
    bb = create_backbone("resnet18", source="timm", weights=None, input_size=64)
    assert bb(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert [b.name for b in bb.blocks][0] == "group0" and len(bb.blocks) == 5
    assert bb.preprocessing.crop_size == 64 and bb.preprocessing.interpolation == "bicubic"
    assert bb.pretrained_classes[:2] == ["tench", "goldfish"]


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "convnext_atto", "efficientnet_b0"])
def test_timm_num_features_is_what_forward_returns(name):
    """Models with a head hidden layer (MobileNetV3's conv_head) report its size, not the trunk's."""
    bb = create_backbone(name, source="timm", weights=None)
    with torch.no_grad():
        assert bb.eval()(torch.randn(1, 3, 64, 64)).shape == (1, bb.num_features)
    assert bb.pretrained_head.in_features == bb.num_features


def test_input_size_override_keeps_ratio():
    bb = create_backbone("resnet18", weights=None, input_size=112)
    assert bb.preprocessing.crop_size == 112 and bb.preprocessing.resize_size == 128


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(name="resnet5O"), "Did you mean: resnet50"),
        (dict(name="resnet18", weights="IMAGENET9K"), "IMAGENET1K_V1"),
        (dict(name="resnet18", source="keras"), "backbone.source"),
        (dict(name="resnett18", source="timm"), "not a timm model"),
    ],
)
def test_bad_backbone_config_is_a_clear_error(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        create_backbone(**kwargs)


def _hub_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def test_pretrained_weights_load_from_seeded_hub_cache():
    """torchvision finds the file of the exact expected name in torch's hub cache: no network."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), _hub_file(weights))
    bb = create_backbone("resnet18", weights="DEFAULT")
    assert bb.weights == "IMAGENET1K_V1"
    assert torch.equal(bb.model.conv1.weight, reference.conv1.weight)
    assert torch.equal(bb.pretrained_head.weight, reference.fc.weight)


def test_download_failure_says_no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    _hub_file(torchvision.models.MobileNet_V2_Weights.DEFAULT).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="no network access.*backbone.weights=null"):
        create_backbone("mobilenet_v2", weights="DEFAULT")


def test_corrupt_cached_weights_say_delete_the_file():
    weights = torchvision.models.SqueezeNet1_0_Weights.DEFAULT
    _hub_file(weights).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not be read.*Delete the file"):
        create_backbone("squeezenet1_0", weights="DEFAULT")


def test_cut_classifier_puts_the_head_on_vggs_conv_features():
    """``backbone.cut=classifier``: VGG's whole classifier goes (no fc6/fc7, no dropout), as the
    AI-for-Beginners lesson's ``vgg.classifier = Linear(25088, 2)``."""
    cut = torchvision_backbone("vgg16", weights=None, input_size=32, cut="classifier")
    assert cut.num_features == 25088 and cut.pretrained_head is None
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Dropout)) for m in cut.model.modules())
    assert cut.model(torch.zeros(1, 3, 32, 32)).shape == (1, 25088)
    with pytest.raises(ConfigError, match=r"backbone\.cut='classifier' is invalid: resnet18 has no `classifier`"):
        torchvision_backbone("resnet18", weights=None, cut="classifier")
    with pytest.raises(ConfigError, match=r"backbone\.cut='head'"):
        torchvision_backbone("resnet18", weights=None, cut="head")
