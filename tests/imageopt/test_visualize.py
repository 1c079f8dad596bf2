"""The visualize task in-process (Hydra compose API): attacks on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from tlresearch.data.arrays import split_item
from tlresearch.data.generate import main as generate_main
from tlresearch.data.images import load_rgb
from tlresearch.visualize import visualize

from .conftest import TINY_BACKBONE, compose_visualize


def test_attack_on_the_test_split_of_a_dataset(tmp_path, folder_root):
    overrides = [
        *TINY_BACKBONE, "task=adversarial", "data=folder", f"data.root={folder_root}", "data_split=test",
        "max_images=4", "target=[zebra]", "steps=2", "batch_size=3", "trainer.enable_progress_bar=false",
    ]
    metrics, objects = visualize(compose_visualize(overrides, tmp_path))
    assert metrics["status"] == "completed" and metrics["attack/pairs"] == 4 and metrics["jobs"] == 2
    names = [p.parent.name for p in objects["sources"].paths]
    assert names == ["class_0", "class_1", "class_2", "class_0"]  # round-robin over the classes
    # class_* are no ImageNet classes: each label is the network's clean prediction
    records = json.loads((tmp_path / "results.json").read_text())
    assert all(r["initially_correct"] for r in records)
    assert all(r["linf"] <= 4 / 255 + 1e-6 for r in records)  # the default eps
    assert len(list((tmp_path / "images").glob("*_to_zebra.png"))) == 4


def test_attack_sources_from_a_dataset_stored_as_arrays(tmp_path):
    root = tmp_path / "cifar10"
    assert generate_main(["cifar10", str(root), "--num-classes", "3", "--images-per-class", "4"]) == 0
    overrides = [
        *TINY_BACKBONE, "task=adversarial", "data=cifar10", f"data.root={root}", "data.download=false",
        "data.verify_checksums=false", "data_split=test", "max_images=2", "target=[zebra]", "steps=1", "batch_size=2",
        "trainer.enable_progress_bar=false",
    ]
    metrics, objects = visualize(compose_visualize(overrides, tmp_path / "run"))
    assert metrics["status"] == "completed" and metrics["attack/pairs"] == 2
    sources = objects["sources"]
    for path, source in zip(sources.paths, sources.pixels):  # each source is its array item, 32 px as stored
        assert Path(split_item(path)[0]).name == "test_batch"
        assert torch.equal(source, TF.pil_to_tensor(load_rgb(path)))
    names = sorted(p.name for p in (tmp_path / "run" / "images").glob("src*_source.png"))
    assert names == [f"src{j:03d}_test_batch_{split_item(p)[1]}_source.png" for j, p in enumerate(sources.paths)]
