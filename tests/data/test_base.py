"""The shared machinery: decoding, splits, subsets, argument checks, loaders."""

from __future__ import annotations

import io
import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler

from tlresearch.data import base
from tlresearch.data.base import Sample, split_counts, stratified_split, take_per_class, to_rgb
from tlresearch.data.folder import ImageFolderDataModule
from tlresearch.data.transforms import Augmentation, Preprocessing
from tlresearch.core.errors import ConfigError


def samples(per_group: dict[str, int]) -> list[Sample]:
    out = []
    for label, (group, n) in enumerate(sorted(per_group.items())):
        out += [Sample(f"/x/{group}/{i}.jpg", f"{group}/{i}.jpg", label, group) for i in range(n)]
    return out


# -- splits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, fractions, expected",
    [
        (100, [0.1, 0.1], [10, 10]),
        (10, [0.25], [3]),  # rounds to nearest
        (3, [0.1, 0.1], [1, 1]),  # tiny class: one each, one left to train
        (2, [0.1, 0.1], [1, 0]),  # never leaves train empty
        (1, [0.5], [0]),
        (0, [0.2], [0]),
        (10, [0.0, 0.2], [0, 2]),  # a zero fraction takes nothing
    ],
)
def test_split_counts(n, fractions, expected):
    assert split_counts(n, fractions) == expected


def test_stratified_split_is_a_partition_stratified_and_seeded():
    data = samples({"a": 20, "b": 10, "c": 5})
    split = stratified_split(data, 0, fractions={"val": 0.2, "test": 0.2})
    all_rel = [s.rel for part in split.values() for s in part]
    assert sorted(all_rel) == sorted(s.rel for s in data)  # disjoint and complete
    per_group = {name: {g: sum(s.group == g for s in part) for g in "abc"} for name, part in split.items()}
    assert per_group["val"] == {"a": 4, "b": 2, "c": 1} == per_group["test"]
    assert stratified_split(data, 0, fractions={"val": 0.2, "test": 0.2}) == split
    assert stratified_split(data, 1, fractions={"val": 0.2, "test": 0.2})["val"] != split["val"]


def test_stratified_split_of_a_group_does_not_depend_on_other_groups():
    """Each group has its own RNG: adding a class leaves the others' split unchanged."""
    small = stratified_split(samples({"a": 20}), 3, fractions={"val": 0.25})
    large = stratified_split(samples({"a": 20, "z": 7}), 3, fractions={"val": 0.25})
    assert [s.rel for s in large["val"] if s.group == "a"] == [s.rel for s in small["val"]]


def test_stratified_split_per_group_clamps_to_leave_one_for_training(caplog):
    split = stratified_split(samples({"a": 30, "b": 3}), 0, per_group={"val": 20})
    counts = {g: sum(s.group == g for s in split["val"]) for g in "ab"}
    assert counts == {"a": 20, "b": 2}
    assert "Too few images" in caplog.text


def test_take_per_class_is_deterministic_and_nested():
    data = samples({"a": 10, "b": 3})
    two, five = take_per_class(data, 2, 0), take_per_class(data, 5, 0)
    assert {s.label: sum(t.label == s.label for t in two) for s in two} == {0: 2, 1: 2}
    assert sum(s.label == 1 for s in five) == 3  # a class with fewer keeps them all
    assert set(two) <= set(five)
    assert take_per_class(data, 2, 0) == two and take_per_class(data, 2, 1) != two


# -- decoding ---------------------------------------------------------------------------------


def roundtrip(image: Image.Image, fmt: str, **params) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    buffer.seek(0)
    opened = Image.open(buffer)
    opened.load()
    return opened


def test_to_rgb_rescales_16_bit_greyscale_instead_of_clipping():
    array = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    image = roundtrip(Image.fromarray(array), "PNG")
    assert image.mode.startswith("I")
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (4, 4, 3) and abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_to_rgb_composites_transparency_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    palette = roundtrip(Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert("P"), "PNG", transparency=0)
    assert np.asarray(to_rgb(palette)).shape == (4, 4, 3)


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "LA", "F", "YCbCr", "P"])
def test_to_rgb_handles_every_mode(mode):
    image = Image.new("RGB", (5, 3), (10, 200, 30)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (5, 3)


@pytest.mark.parametrize("limit", [1000, 3000])  # 4096 px: over twice the limit (PIL refuses) / over it (PIL only warns)
def test_load_rgb_refuses_decompression_bombs(tmp_path, monkeypatch, limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.warns(Image.DecompressionBombWarning) if limit == 3000 else nullcontext():
        with pytest.raises(Image.DecompressionBombError):
            base.load_rgb(path)
        assert base.check_image(path).startswith("undecodable: DecompressionBombError")


# -- arguments --------------------------------------------------------------------------------


def test_auto_num_workers_follows_the_machine():
    cpus = len(os.sched_getaffinity(0))
    assert base.resolve_num_workers("auto") == max(0, min(8, cpus - 1))
    assert base.resolve_num_workers(3) == 3


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"num_workers": -1}, "data.num_workers"),
        ({"num_workers": "many"}, "data.num_workers"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"pin_memory": "yes"}, "data.pin_memory"),
        ({"download": "no"}, "data.download"),
        ({"max_per_class": 0}, "data.max_per_class"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"test_fraction": -0.1}, "data.test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "sum to less than 1"),
        ({"filter": "jpeg"}, "data.filter"),
        ({"augment": {"hflp": True}}, "Did you mean: hflip"),
        ({"augment": {"scale": [0.5, 0.1]}}, "data.augment.scale"),
    ],
)
def test_bad_arguments_raise_config_errors_naming_the_key(folder_root, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ImageFolderDataModule(root=str(folder_root), **kwargs)


def test_augment_and_preprocessing_accept_hydra_containers(folder_root):
    """Hydra passes nested config as DictConfig, and merges an instantiate() kwarg into one."""
    aug = OmegaConf.create({"scale": [0.5, 1.0], "hflip": False})
    pre = OmegaConf.create({"crop_size": 48, "resize_size": 56, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"})
    dm = ImageFolderDataModule(root=str(folder_root), augment=aug, preprocessing=pre, num_workers=0)
    assert dm.augmentation == Augmentation(scale=(0.5, 1.0), hflip=False)
    assert dm.preprocessing == Preprocessing(48, 56, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# -- loaders ----------------------------------------------------------------------------------


def test_loaders_follow_the_contract(folder_root, small_pre):
    dm = ImageFolderDataModule(root=str(folder_root), num_workers=2, pin_memory=False, batch_size=4, preprocessing=small_pre)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)
    assert train.persistent_workers and not train.drop_last and train.pin_memory is False
    assert train.batch_size == 4
    no_workers = ImageFolderDataModule(root=str(folder_root), num_workers=0, pin_memory=True)
    assert not no_workers.train_dataloader().persistent_workers and no_workers.train_dataloader().pin_memory


def test_shuffle_order_follows_the_global_seed(folder_root, small_pre):
    dm = ImageFolderDataModule(root=str(folder_root), num_workers=0, batch_size=64, preprocessing=small_pre)

    def order(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return list(iter(dm.train_dataloader().sampler))

    assert order(1) == order(1) != order(2)


def test_set_preprocessing_after_setup_changes_the_batches(folder_root, small_pre):
    dm = ImageFolderDataModule(root=str(folder_root), num_workers=0, batch_size=4, preprocessing=small_pre)
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 3, 32, 32)
    dm.set_preprocessing(Preprocessing(crop_size=40, resize_size=44))
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 3, 40, 40)
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 40, 40)


def test_worker_processes_load_batches(folder_root, small_pre):
    """With workers the dataset is pickled into other processes; batches must still come back."""
    dm = ImageFolderDataModule(root=str(folder_root), num_workers=1, batch_size=8, preprocessing=small_pre)
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert len(labels) == len(dm.dataset("train"))
