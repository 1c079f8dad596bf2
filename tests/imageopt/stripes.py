"""Synthetic stripe images and a small classifier trained on them in a few seconds.

Shared by the test fixtures and ``benchmarks/imageopt_bench.py``: faint horizontal / vertical /
diagonal stripes under random colour and noise are easy to learn, yet (faint signal) easy to
attack, like real classifiers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

STRIPE_CLASSES = ["horizontal", "vertical", "diagonal"]
SIZE = 32


def stripe_images(per_class: int, generator: torch.Generator, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of each class, with 8-bit pixel values, and their labels."""
    labels = torch.arange(len(STRIPE_CLASSES)).repeat_interleave(per_class)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    coords = torch.stack([yy, xx, (yy + xx) / math.sqrt(2)])
    phase = torch.rand(len(labels), generator=generator) * 2 * math.pi
    pattern = torch.sin(2 * math.pi / 6 * coords[labels] + phase[:, None, None])
    colour = torch.rand(len(labels), 3, 1, 1, generator=generator) * 0.3 - 0.15
    noise = 0.03 * torch.randn(len(labels), 3, size, size, generator=generator)
    images = (0.5 + 0.06 * pattern[:, None] + colour + noise).clamp(0, 1)
    return torch.round(images * 255) / 255, labels


def train_stripe_classifier(ckpt_path: Path, size: int = SIZE, per_class: int = 32, epochs: int = 8, seed: int = 0) -> Path:
    """Train a TransferClassifier (timm ``test_resnet``, random init, full fine-tuning) on stripe
    images and save it the way Lightning saves checkpoints (``hyper_parameters`` + ``state_dict``)."""
    from tlresearch.models.classifier import TransferClassifier

    generator = torch.Generator().manual_seed(seed)
    images, labels = stripe_images(per_class, generator, size)
    torch.manual_seed(seed)
    model = TransferClassifier(
        backbone={"_target_": "tlresearch.models.timm_backbones.create_backbone", "name": "test_resnet",
                  "weights": None, "input_size": size},
        num_classes=len(STRIPE_CLASSES),
        class_names=STRIPE_CLASSES,
        finetune={"_target_": "tlresearch.finetune.full.FullFinetune"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
    )
    pre = model.backbone.preprocessing
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=generator).split(16):
            loss = F.cross_entropy(model((images[idx] - mean) / std), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt_path)
    return ckpt_path
