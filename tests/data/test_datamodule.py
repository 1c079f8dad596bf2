"""The base DataModule (data/datamodule.py): argument checks and loaders."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import SequentialSampler

from tlresearch.core.errors import ConfigError
from tlresearch.data.folder import ImageFolderDataModule
from tlresearch.data.sampler import ResumableRandomSampler
from tlresearch.data.settings import resolve_num_workers
from tlresearch.data.transforms import Augmentation, Preprocessing

# -- arguments --------------------------------------------------------------------------------


def test_auto_num_workers_follows_the_machine():
    cpus = len(os.sched_getaffinity(0))
    assert resolve_num_workers("auto") == max(0, min(8, cpus - 1))
    assert resolve_num_workers(3) == 3


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
    pre = OmegaConf.create({"crop_size": 48, "resize_size": 56, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                           "interpolation": "bilinear"})
    dm = ImageFolderDataModule(root=str(folder_root), augment=aug, preprocessing=pre, num_workers=0)
    assert dm.augmentation == Augmentation(scale=(0.5, 1.0), hflip=False)
    assert dm.preprocessing == Preprocessing(48, 56, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# -- loaders ----------------------------------------------------------------------------------


def test_loaders_follow_the_contract(folder_root, small_pre):
    dm = ImageFolderDataModule(root=str(folder_root), num_workers=2, pin_memory=False, batch_size=4, preprocessing=small_pre)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, ResumableRandomSampler) and train.sampler.shuffle and isinstance(val.sampler, SequentialSampler)
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
