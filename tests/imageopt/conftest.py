"""Fixtures of the image-optimisation tests: tiny networks, a small trained classifier, configs.

Everything is small enough for two CPU cores: 32-pixel images, networks of a few thousand
(random) or a few hundred thousand (timm ``test_resnet``) parameters, no downloads.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from tests.helpers import compose_cfg, run_cli
from tlresearch.imageopt.network import FrozenClassifier

from .stripes import SIZE, STRIPE_CLASSES, stripe_images, train_stripe_classifier

# The CLI tests' network: timm's tiny test ResNet, random weights (no download), 32-px images.
TINY_BACKBONE = ["backbone=timm", "backbone.name=test_resnet", "backbone.weights=null", f"image_size={SIZE}"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads per test
    process make small-tensor work up to 30x slower; the previous setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cnn(num_classes: int = 5, seed: int = 0) -> FrozenClassifier:
    """A randomly initialised 2-layer CNN, frozen, on [0, 1] images."""
    torch.manual_seed(seed)
    features = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    )
    head = nn.Linear(128, num_classes)
    names = [f"class{i}" for i in range(num_classes)]
    return FrozenClassifier(features, head, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), names, name="tiny", input_size=SIZE)


@pytest.fixture
def tiny_network() -> FrozenClassifier:
    return tiny_cnn()


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory) -> dict:
    """A TransferClassifier (timm test_resnet, 3 stripe classes) trained for a few seconds and
    saved the way Lightning saves checkpoints; plus held-out images (tensors and PNG folders)."""
    root = tmp_path_factory.mktemp("classifier")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a session fixture runs before the per-test one_torch_thread
    try:
        ckpt = train_stripe_classifier(root / "stripes.ckpt")
    finally:
        torch.set_num_threads(threads)
    test_x, test_y = stripe_images(6, torch.Generator().manual_seed(1))
    image_dir = root / "images"
    for i, (image, label) in enumerate(zip(test_x, test_y)):
        folder = image_dir / STRIPE_CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.round(image * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return {"ckpt": ckpt, "images": test_x, "labels": test_y, "image_dir": image_dir}


@pytest.fixture
def trained_network(trained_classifier) -> FrozenClassifier:
    from tlresearch.imageopt.network import network_from_checkpoint

    return network_from_checkpoint(trained_classifier["ckpt"])


def compose_visualize(overrides: Sequence[str], out_dir: Path) -> DictConfig:
    """The visualize config through Hydra's compose API (as the CLI would build it)."""
    return compose_cfg("visualize", list(overrides), out_dir)


def run_visualize(args: Sequence[str], run_dir: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m tlresearch.visualize ARGS hydra.run.dir=RUN_DIR`` in a subprocess (one
    intra-op thread per process, so one and two DDP processes compute alike)."""
    args = [*args, f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    return run_cli("tlresearch.visualize", *args, timeout=timeout, env={"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
