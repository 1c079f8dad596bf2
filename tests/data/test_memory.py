"""data.in_memory=true: images decoded once into RAM; evaluation batches unchanged."""

from __future__ import annotations

import pytest
import torch

from tlresearch.core.errors import ConfigError
from tlresearch.data.folder import ImageFolderDataModule
from tlresearch.data.memory import InMemoryImages
from tlresearch.data.transforms import Preprocessing


def datamodule(root, tmp_path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root, cache_dir=tmp_path, batch_size=4, num_workers=0, **kwargs)
    dm.set_preprocessing(Preprocessing(crop_size=32, resize_size=40))
    return dm


def test_in_memory_evaluation_batches_equal_the_file_pipeline(folder_root, tmp_path):
    files, held = datamodule(folder_root, tmp_path), datamodule(folder_root, tmp_path, in_memory=True)
    loader = held.dataloader("val")
    assert isinstance(loader.dataset, InMemoryImages)
    assert all(min(a.shape[:2]) == 40 for a in loader.dataset.arrays)  # short side at the resize size
    for (x_files, y_files), (x_held, y_held) in zip(files.dataloader("val"), loader):
        assert torch.equal(y_files, y_held)
        torch.testing.assert_close(x_held, x_files, atol=0, rtol=0)


def test_in_memory_training_loader_and_new_preprocessing(folder_root, tmp_path):
    held = datamodule(folder_root, tmp_path, in_memory=True)
    x, y = next(iter(held.dataloader("train")))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    first = held.dataloader("train").dataset.dataset  # the shuffled loader wraps it in a SeededDataset
    assert held.dataloader("train").dataset.dataset is first  # decoded once, reused by later loaders
    held.set_preprocessing(Preprocessing(crop_size=24, resize_size=28))
    again = held.dataloader("train").dataset.dataset
    assert again is not first and all(min(a.shape[:2]) == 28 for a in again.arrays)
    assert next(iter(held.dataloader("train")))[0].shape == (4, 3, 24, 24)


def test_in_memory_must_be_a_boolean(folder_root, tmp_path):
    with pytest.raises(ConfigError, match="data.in_memory"):
        ImageFolderDataModule(folder_root, cache_dir=tmp_path, in_memory="yes")
