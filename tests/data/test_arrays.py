"""Images stored in array files (CIFAR, SVHN, PCam) behave like image files: each is named
``<array file>#<index>``, the name loads its pixels, per-image predictions and the W&B table name
each test image, the feature-cache key follows the array files, and ``decode_on_device`` falls back."""

from __future__ import annotations

import logging
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from tests.helpers import FAST, compose_cfg
from tlresearch.data.arrays import image_stem, sample_file, split_item
from tlresearch.data.generate import main as generate_main
from tlresearch.data.generate_torchvision import cifar
from tlresearch.data.images import load_rgb
from tlresearch.data.torchvision_sources import open_split
from tlresearch.data.transforms import eval_transform
from tlresearch.protocols.cached_data import CachedFeatureDataModule
from tlresearch.protocols.features import FeatureSpec, feature_key
from tlresearch.results.predictions import read_predictions
from tlresearch.results.wandb_report import predictions_table
from tlresearch.train import train

ARRAYS = ["data.download=false", "data.verify_checksums=false", "data.batch_size=8"]


def generate(name: str, root: Path) -> Path:
    assert generate_main([name, str(root), "--num-classes", "3", "--images-per-class", "6"]) == 0
    return root


def datamodule(name: str, root: Path, tmp_path: Path, *extra: str):
    """The DataModule of ``data=<name>`` over the files at ``root`` (generated there first if missing)."""
    if not root.exists():
        generate(name, root)
    return instantiate(compose_cfg("train", [*FAST, f"data={name}", f"data.root={root}", *ARRAYS, *extra], tmp_path / "run").data)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("name", ["cifar10", "svhn", "pcam"])
def test_each_image_is_named_by_its_array_file_and_index_and_the_name_loads_its_pixels(name, tmp_path):
    dm = datamodule(name, tmp_path / "data", tmp_path)
    dm.setup()
    every = [s for split in ("train", "val", "test") for s in dm.dataset(split).samples]
    assert len({s.rel for s in every}) == len(every)  # unambiguous over the whole dataset
    test = dm.dataset("test").samples
    official = open_split(name, dm.root, "test", verify_checksums=False, options={})
    for i, sample in enumerate(test):  # the test split keeps torchvision's order
        file, index = split_item(dm.root / sample.rel)
        assert (file, index) == split_item(sample.path) and index == i and Path(file).is_file()
        assert np.array_equal(pixels(load_rgb(dm.root / sample.rel)), pixels(official[i][0]))
    assert image_stem(test[1].path) == f"{Path(sample_file(test[1].path)).stem}_1"


def test_an_image_file_whose_name_ends_like_an_array_index_is_still_a_file(tmp_path):
    odd = tmp_path / "photo#3"
    odd.write_bytes(b"")
    assert split_item(odd) is None and sample_file(odd) == str(odd)
    assert split_item(tmp_path / "photo.jpg") is None and split_item(tmp_path / "batch#x") is None


@pytest.mark.slow
def test_a_cifar10_run_names_each_test_image_in_predictions_csv_even_with_decode_on_device(tmp_path, caplog):
    root = tmp_path / "data"
    overrides = [*FAST, *ARRAYS, "data=cifar10", f"data.root={generate('cifar10', root)}", "backbone=timm",
                 "backbone.name=test_resnet", "backbone.weights=null", "backbone.input_size=32",
                 "finetune=logistic", "finetune.num_l2=3",
                 "finetune.decode_on_device=true", "finetune.cache_features=false"]
    with caplog.at_level(logging.WARNING, logger="tlresearch.protocols.cached_data"):
        metrics, objects = train(compose_cfg("train", overrides, tmp_path / "run"))
    assert metrics["status"] == "completed"
    assert "finetune.decode_on_device=true does not apply to cifar10" in caplog.text
    predictions = read_predictions(tmp_path / "run" / "predictions.csv")
    test = open_split("cifar10", root, "test", verify_checksums=False, options={})
    assert len(set(predictions.paths)) == len(predictions.paths) == len(test)
    for path in predictions.paths:
        file, index = split_item(root / path)
        assert Path(file).name == "test_batch"
        assert np.array_equal(pixels(load_rgb(root / path)), pixels(test[index][0]))


def test_the_feature_cache_key_changes_when_an_array_file_is_replaced(tmp_path):
    root = tmp_path / "data"

    def key() -> tuple[str, list[str]]:
        dm = datamodule("cifar10", root, tmp_path)  # the files as they are now
        samples = dm.dataset("test").samples
        return feature_key("weights", samples, FeatureSpec(eval_transform(dm.preprocessing)))[0], [s.rel for s in samples]

    generate("cifar10", root)
    first, names = key()
    assert key() == (first, names)  # unchanged files: the same key
    cifar(tmp_path / "other", 3, 6, seed=1)  # same shapes, other pixels
    shutil.copy(tmp_path / "other" / "cifar-10-batches-py" / "test_batch", root / "cifar-10-batches-py" / "test_batch")
    second, names_after = key()
    assert names_after == names and second != first


def test_decode_on_device_applies_to_jpeg_files_and_falls_back_with_a_warning_for_arrays(tmp_path, folder_root, caplog):
    cifar10 = datamodule("cifar10", tmp_path / "data", tmp_path)
    folder = instantiate(compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}"], tmp_path / "f").data)
    with caplog.at_level(logging.WARNING, logger="tlresearch.protocols.cached_data"):
        arrays = CachedFeatureDataModule(cifar10, nn.Identity(), cache_dir=None, decode_on_device=True)
        assert not arrays.spec("test").decode_on_device and not arrays.spec("val").decode_on_device
        files = CachedFeatureDataModule(folder, nn.Identity(), cache_dir=None, decode_on_device=True)
        assert files.spec("test").decode_on_device
    assert caplog.text.count("decode_on_device=true does not apply to cifar10") == 1  # said once


def test_the_wandb_predictions_table_shows_each_array_image(tmp_path, monkeypatch):
    rows = []
    fake = types.SimpleNamespace(
        Table=lambda columns: types.SimpleNamespace(add_data=lambda *row: rows.append(dict(zip(columns, row))), columns=columns),
        Image=lambda image: image,  # the PIL thumbnail, as wandb.Image receives it
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    dm = datamodule("cifar10", tmp_path / "data", tmp_path)
    test = dm.dataset("test").samples
    probs = torch.full((len(test), dm.num_classes), 1.0 / dm.num_classes)
    record = {"probs": probs, "labels": torch.tensor([s.label for s in test]), "indices": torch.arange(len(test))}
    predictions_table(record, dm, dm.classes, limit=len(test))
    assert sorted(r["file"] for r in rows) == sorted(s.rel for s in test)
    for row in rows:
        assert row["image"] is not None
        assert np.array_equal(pixels(row["image"]), pixels(load_rgb(test[row["index"]].path)))  # 32 px: under the thumbnail size
