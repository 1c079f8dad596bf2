"""End-to-end training through Hydra's compose API on generated datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from tests.helpers import FAST, check_predictions, compose_cfg, truncate_file
from tests.probes import BlockChangeProbe
from tlresearch.data.generate import generate_folder
from tlresearch.train import train


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def check_run_dir(run_dir: Path, metrics: dict, datamodule) -> None:
    num_classes = datamodule.num_classes
    on_disk = read_metrics(run_dir)
    assert on_disk["status"] == "completed"
    assert on_disk == json.loads(json.dumps(metrics))
    for key in ("test/acc", "test/mean_class_acc", "val/best_mean_class_acc"):
        assert 0.0 <= on_disk[key] <= 1.0, key
    assert ("test/top5" in on_disk) == (num_classes > 5)
    assert 0 < on_disk["params/trainable"] <= on_disk["params/total"]
    assert on_disk["time/fit_s"] > 0 and on_disk["throughput/train_img_s"] > 0
    # training steps are a part of the epochs: their rate is the higher of the two
    assert on_disk["throughput/train_img_s"] >= on_disk["throughput/epoch_img_s"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(on_disk["best_checkpoint"]).is_file()
    assert (run_dir / "provenance.json").is_file()
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (run_dir / png).stat().st_size > 1000, png
    confusion = json.loads((run_dir / "confusion_matrix.json").read_text())
    assert len(confusion["classes"]) == num_classes
    assert sum(map(sum, confusion["matrix"])) > 0
    check_predictions(run_dir, on_disk, datamodule)


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, root_fixture, num_classes",
    [("pets", "pets_root", None), ("cats_dogs", "cats_dogs_root", 2), ("folder", "folder_root", None)],
)
def test_train_end_to_end_on_each_datamodule(data, root_fixture, num_classes, request, tmp_path):
    root = request.getfixturevalue(root_fixture)
    cfg = compose_cfg("train", [*FAST, f"data={data}", f"data.root={root}"], tmp_path)
    metrics, objects = train(cfg)
    check_run_dir(tmp_path, metrics, objects["datamodule"])
    if num_classes:
        assert objects["datamodule"].num_classes == num_classes


def shuffle_train_labels(root: Path, seed: int = 0) -> None:
    """Move every train image into a random class folder (val and test labels stay true)."""
    files = sorted((root / "train").rglob("*.jpg"))
    classes = sorted(p.name for p in (root / "train").iterdir())
    gen = torch.Generator().manual_seed(seed)
    for i, f in enumerate(files):
        target = root / "train" / classes[int(torch.randint(len(classes), (1,), generator=gen))] / f"shuffled_{i}.jpg"
        f.rename(target)


# 8 classes x 30 training images (10 val, 10 test each). With shuffled labels a network can at best
# learn each true class's accidental majority label, which matches the true class for few of the
# 8 classes (Binomial(8, 1/8)): more classes make "at chance" a sharp statement.
LEARN = [*FAST, "data=folder", "data.max_per_class=30", "finetune=full", "optimizer=adamw", "optimizer.lr=0.003",
         "trainer.max_epochs=6", "scheduler.warmup_epochs=1"]


@pytest.mark.slow
def test_learning_is_real_and_not_with_shuffled_labels(tmp_path):
    """Far above chance on the true labels; near chance when the training labels are shuffled."""
    results = {}
    for shuffled in (False, True):
        root = tmp_path / f"data-{shuffled}"
        generate_folder(root, classes=8, images_per_class=50, min_size=48, max_size=72, seed=1)
        if shuffled:
            shuffle_train_labels(root)
        cfg = compose_cfg("train", [*LEARN, f"data.root={root}"], tmp_path / f"run-{shuffled}")
        results[shuffled] = train(cfg)[0]["test/acc"]
    chance = 1 / 8
    assert results[False] >= 0.75, results
    assert results[True] <= chance + 0.25, results


def initial_backbone_state(cfg) -> dict:
    """The backbone state a run of ``cfg`` starts from: seed_everything(seed), then construction."""
    import pytorch_lightning as pl

    from tlresearch.core.instantiate import instantiate_node
    from tlresearch.train import build_classifier

    pl.seed_everything(cfg.seed, workers=True)
    dm = instantiate_node(cfg.data, "data")
    model = build_classifier(cfg, dm.num_classes, list(dm.classes))
    return {k: v.clone() for k, v in model.backbone.model.state_dict().items()}


@pytest.mark.slow
def test_linear_probe_leaves_backbone_bitwise_unchanged_and_full_changes_it(pets_root, tmp_path):
    for finetune in ("linear_probe", "full"):
        cfg = compose_cfg("train", [*FAST, f"data.root={pets_root}", f"finetune={finetune}"], tmp_path / finetune)
        start = initial_backbone_state(cfg)
        _, objects = train(cfg)
        end = objects["model"].backbone.model.state_dict()
        assert end.keys() == start.keys()
        # parameters AND BatchNorm buffers (running_mean / running_var / num_batches_tracked)
        changed = {k for k in start if not torch.equal(end[k], start[k])}
        if finetune == "linear_probe":
            assert changed == set(), f"linear_probe changed {sorted(changed)[:5]}"
        else:
            assert any(k.endswith("running_mean") for k in changed) and "conv1.weight" in changed


@pytest.mark.slow
def test_gradual_unfreezes_at_the_configured_epoch(pets_root, tmp_path):
    cfg = compose_cfg(
        "train",
        [*FAST, f"data.root={pets_root}", "finetune=gradual", "finetune.start_epoch=2", "finetune.max_blocks=1",
         "trainer.max_epochs=3", "+callbacks.probe._target_=tests.probes.BlockChangeProbe"],
        tmp_path,
    )
    _, objects = train(cfg)
    probe = next(c for c in objects["trainer"].callbacks if isinstance(c, BlockChangeProbe))
    assert probe.changed[0] == set() and probe.changed[1] == set(), probe.changed
    assert probe.changed[2] == {"layer4"}, probe.changed


@pytest.mark.slow
def test_pretrained_weights_path_offline(pets_root, tmp_path):
    """Seed torch's hub cache with a file of the exact name torchvision expects; train with weights=DEFAULT."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), hub_file)
    overrides = [o for o in FAST if not o.startswith("backbone.weights")]
    cfg = compose_cfg("train", [*overrides, f"data.root={pets_root}", "backbone.weights=DEFAULT",
                                "finetune=linear_probe", "trainer.max_epochs=1"], tmp_path)
    metrics, objects = train(cfg)
    assert metrics["status"] == "completed"
    assert torch.equal(objects["model"].backbone.model.conv1.weight, reference.conv1.weight)
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["backbone"]["weights"] == "IMAGENET1K_V1"


@pytest.mark.slow
def test_metrics_report_the_splits_and_the_excluded_test_image(pets_small_copy, tmp_path):
    """Small classes and a broken test JPEG, through the train task: training keeps at least as many
    images per class as validation, test/acc is computed on the remaining test images only, and
    metrics.json and provenance.json say what each split held."""
    test_ids = [line.split()[0] for line in (pets_small_copy / "oxford-iiit-pet/annotations/test.txt").read_text().splitlines()]
    truncate_file(pets_small_copy / "oxford-iiit-pet" / "images" / f"{test_ids[0]}.jpg")
    cfg = compose_cfg("train", [*FAST, f"data.root={pets_small_copy}", "trainer.max_epochs=1"], tmp_path)
    train(cfg)
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "completed"
    assert metrics["data/test_excluded"] == 1 and metrics["data/test_images"] == len(test_ids) - 1
    assert metrics["data/train_per_class_min"] >= metrics["data/val_per_class_max"] > 0
    assert metrics["data/train_replaced"] == metrics["data/val_replaced"] == 0
    confusion = json.loads((tmp_path / "confusion_matrix.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == len(test_ids) - 1  # the denominator of test/acc
    dataset = json.loads((tmp_path / "provenance.json").read_text())["dataset"]
    assert dataset["test_excluded"][0]["path"] == f"images/{test_ids[0]}.jpg"
    assert sum(c["test"] for c in dataset["images_per_class"].values()) == len(test_ids) - 1


def test_sockets_are_blocked_in_tests():
    import socket

    with pytest.raises(Exception, match="socket"):
        socket.create_connection(("example.com", 80), timeout=1)
