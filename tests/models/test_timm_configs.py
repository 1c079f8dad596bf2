"""The backbones of today (DINOv2, CLIP image towers, ViT-B/16 in21k) through timm: each config's
contract and preprocessing, and their pretrained path offline (a local weights file)."""

from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf

from tlresearch.core.instantiate import instantiate_node
from tlresearch.runner.entry import config_dir

TIMM_CONFIGS = ["dinov2_vits14", "dinov2_vitb14", "clip_vitb16", "clip_vitb16_laion", "vit_b16_in21k"]


def _node(name: str, **overrides) -> dict:
    folder = config_dir() / "backbone"
    own = OmegaConf.load(folder / f"{name}.yaml")
    merged = OmegaConf.merge(OmegaConf.load(folder / "timm.yaml"), {k: v for k, v in own.items() if k != "defaults"}, overrides)
    return OmegaConf.to_container(merged, resolve=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_timm_config_contract_and_preprocessing(name):
    node = _node(name, weights=None, input_size=28 if "14" in name else 32)
    bb = instantiate_node(node, "backbone")
    size = node["input_size"]
    with torch.no_grad():
        assert bb.eval()(torch.randn(2, 3, size, size)).shape == (2, bb.num_features) == (2, bb.model.num_features)
    assert len(bb.blocks) >= 3  # stem, transformer blocks, final norm: freeze schedules have something to walk
    owned = sorted(n for b in bb.blocks for n, _ in bb.model.named_parameters() if b.owns(n))
    assert owned == sorted(n for n, _ in bb.model.named_parameters())
    want = timm.data.resolve_data_config({}, model=timm.create_model(_node(name)["name"], pretrained=False))
    p = bb.preprocessing
    assert p.crop_size == size and p.resize_size == int(size / want["crop_pct"])
    assert (p.mean, p.std, p.interpolation) == (tuple(want["mean"]), tuple(want["std"]), want["interpolation"])


def test_dinov2_defaults_to_224_pixels_not_timms_518():
    node = _node("dinov2_vits14")
    assert node["input_size"] == 224 and node["weights"] == "DEFAULT"


@pytest.mark.slow
def test_pretrained_vit_loads_a_local_file_at_another_input_size(tmp_path):
    """The pretrained path without the hub (timm's pretrained_cfg_overlay file, what
    backbone.checkpoint_file sets): weights load, position embeddings resampled to the input size."""
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56)
    torch.save(reference.state_dict(), tmp_path / "dinov2.pth")
    node = _node("dinov2_vits14", input_size=28, checkpoint_file=str(tmp_path / "dinov2.pth"))
    bb = instantiate_node(node, "backbone")
    assert bb.weights == "DEFAULT" and bb.model.pos_embed.shape[1] == 1 + 2 * 2
    assert torch.equal(bb.model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        assert bb.eval()(torch.randn(1, 3, 28, 28)).shape == (1, 384)
