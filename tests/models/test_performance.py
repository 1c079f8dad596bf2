"""Speed settings: channels_last at fit start, autocast per precision, the device of a trainer config."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlresearch.core.errors import ConfigError
from tlresearch.models.classifier import TransferClassifier
from tlresearch.models.performance import autocast_for, channels_last_wanted, device_of_trainer_config

CPU = torch.device("cpu")


def classifier(**kwargs) -> TransferClassifier:
    return TransferClassifier(
        backbone={"_target_": "tlresearch.models.torchvision_backbones.create_backbone", "name": "resnet18", "weights": None},
        num_classes=3,
        finetune={"_target_": "tlresearch.finetune.full.FullFinetune"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
        **kwargs,
    )


def fit_one_step(model: TransferClassifier) -> None:
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=4))


def conv1_is_channels_last(model: TransferClassifier) -> bool:
    weight = model.backbone.model.conv1.weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize("setting, expected", [(True, True), ("auto", False), (False, False)])
def test_channels_last_is_applied_at_fit_start(setting, expected):
    model = classifier(channels_last=setting)
    assert not conv1_is_channels_last(model)  # nothing happens at construction
    fit_one_step(model)
    assert conv1_is_channels_last(model) is expected  # auto: on for CUDA only, this is a CPU


def test_channels_last_auto_wants_cuda_and_convolutions():
    conv, mlp = nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.Linear(3, 4))
    assert channels_last_wanted("auto", conv, torch.device("cuda")) is True
    assert channels_last_wanted("auto", conv, CPU) is False
    assert channels_last_wanted(True, mlp, torch.device("cuda")) is False  # nothing to convert
    with pytest.raises(ConfigError, match="model.channels_last"):
        classifier(channels_last="yes")


def test_cached_features_pass_straight_to_the_head():
    model = classifier().eval()
    features = torch.randn(5, model.backbone.num_features)
    torch.testing.assert_close(model(features), model.head(features))


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32), ("16-mixed", torch.float32)])
def test_autocast_follows_the_lightning_precision_on_cpu(precision, dtype):
    with autocast_for(CPU, precision):
        out = torch.randn(4, 4) @ torch.randn(4, 4)
    assert out.dtype is dtype  # fp16 autocast is CUDA-only: full precision on a CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_trainer_config_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
        device_of_trainer_config({"accelerator": "gpu"})
    assert device_of_trainer_config({"accelerator": "auto"}) == CPU
