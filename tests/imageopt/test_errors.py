"""Bad input gives a ConfigError that names the key, the bad value and the fix."""

from __future__ import annotations

import pytest
import torch

from tlresearch.core.errors import ConfigError
from tlresearch.imageopt.network import network_from_checkpoint, resolve_class
from tlresearch.visualize import visualize

from .conftest import TINY_BACKBONE, compose_visualize


def run(overrides, tmp_path):
    return visualize(compose_visualize([*TINY_BACKBONE, *overrides], tmp_path))


def test_unknown_class_name_suggests_close_names(tmp_path):
    with pytest.raises(ConfigError, match=r"target\[1\]='zebar' is not a class.*Did you mean: zebra"):
        run(["target=[tabby,zebar]"], tmp_path)
    with pytest.raises(ConfigError, match=r"target=1000 is out of range: class indices go from 0 to 999"):
        resolve_class(1000, ["x"] * 1000, "target")


def test_ideal_without_target_says_what_to_give(tmp_path):
    with pytest.raises(ConfigError, match=r"target is empty: task=ideal needs target classes, e\.g\. target=\["):
        run([], tmp_path)


@pytest.mark.parametrize("eps", ["0", "-0.1", "0/255"])
def test_non_positive_eps_is_rejected(tmp_path, eps):
    with pytest.raises(ConfigError, match=r"adversarial\.eps=.* is invalid: the perturbation budget must be > 0"):
        run(["task=adversarial", f"adversarial.eps={eps}"], tmp_path)


def test_eps_that_is_no_number_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"adversarial\.eps='four' is not a number"):
        run(["task=adversarial", "adversarial.eps=four"], tmp_path)


def test_missing_image_path_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"images: '.*nowhere/dog\.jpg' matches no image file"):
        run(["task=adversarial", f"images=[{tmp_path}/nowhere/dog.jpg]"], tmp_path)


def test_undecodable_image_is_rejected(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(ConfigError, match=r"images: '.*broken\.png' could not be decoded as an image"):
        run(["task=adversarial", f"images=[{bad}]"], tmp_path)


def test_checkpoint_of_another_kind_is_rejected(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}, other)
    with pytest.raises(ConfigError, match=r"ckpt_path=.*other\.ckpt' is not a tlresearch classifier checkpoint"):
        network_from_checkpoint(other)
    with pytest.raises(ConfigError, match=r"check_ckpt_path: ckpt_path=.*is not a tlresearch classifier checkpoint"):
        network_from_checkpoint(other, "check_ckpt_path")
    with pytest.raises(ConfigError, match=r"ckpt_path=.*missing\.ckpt' does not exist"):
        run(["task=ideal", "target=0", f"ckpt_path={tmp_path}/missing.ckpt"], tmp_path)


def test_preset_for_another_task_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"preset=pgd is made for task=adversarial, not task=ideal"):
        run(["preset=pgd", "task=ideal", "target=0"], tmp_path)


def test_unknown_task_and_unknown_settings_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"task='adverserial' is invalid.*Did you mean: adversarial"):
        run(["task=adverserial"], tmp_path)
    with pytest.raises(ConfigError, match=r"`adversarial\.stepsize` is not a setting.*Did you mean: step_size"):
        run(["task=adversarial", "+adversarial.stepsize=0.1"], tmp_path)
    with pytest.raises(ConfigError, match=r"adversarial\.norm='l3' is invalid: use one of \['linf', 'l2'\]"):
        run(["task=adversarial", "adversarial.norm=l3"], tmp_path)


def test_image_size_the_network_cannot_take_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"image_size=4 is too small"):
        run(["target=0", "image_size=4"], tmp_path)


def test_labels_that_do_not_match_the_images_are_rejected(tmp_path, trained_classifier):
    images = f"images=[{trained_classifier['image_dir']}/*/*.png]"
    with pytest.raises(ConfigError, match=r"labels has 2 entries but images gives 18 files"):
        run(["task=adversarial", images, f"ckpt_path={trained_classifier['ckpt']}", "labels=[vertical,horizontal]"], tmp_path)


def test_no_source_image_and_both_sources_are_rejected(tmp_path, folder_root):
    with pytest.raises(ConfigError, match=r"images=\[\] names no image"):
        run(["task=adversarial"], tmp_path)
    with pytest.raises(ConfigError, match=r"both images and data are set"):
        run(["task=adversarial", "data=folder", f"data.root={folder_root}", f"images=[{tmp_path}]"], tmp_path)
    with pytest.raises(ConfigError, match=r"data_split='tset' is invalid.*Did you mean: test"):
        run(["task=adversarial", "data=folder", f"data.root={folder_root}", "data_split=tset"], tmp_path)
