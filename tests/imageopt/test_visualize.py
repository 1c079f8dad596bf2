"""The visualize task in-process (Hydra compose API): attacks on a dataset split."""

from __future__ import annotations

import json

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
