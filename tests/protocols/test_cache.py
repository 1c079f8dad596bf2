"""The frozen-backbone feature cache: same results as the image path, keys, reuse, shards, views."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from tests.helpers import FAST, check_predictions, compose_cfg, run_cli
from tlresearch.core.instantiate import instantiate_node
from tlresearch.data.generate import generate_folder
from tlresearch.data.gpu_decode import device_decoded_batches
from tlresearch.data.images import ImageListDataset, Sample
from tlresearch.data.transforms import Augmentation, Preprocessing, eval_transform, train_transform
from tlresearch.evaluate import evaluate
from tlresearch.protocols.cached_data import CachedFeatureDataModule
from tlresearch.protocols.epoch_loop import cache_decision
from tlresearch.protocols.features import FeatureCache, FeatureSpec, extract_features, feature_key, load_or_extract, module_digest
from tlresearch.results.predictions import read_predictions
from tlresearch.train import build_classifier, train

PROBE = [*FAST, "finetune=linear_probe", "data.augment.enabled=false", "data.val_per_class=2"]


class TinyBackbone(nn.Module):
    """A conv net small enough to extract features in milliseconds."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).relu().mean(dim=(2, 3))


def folder_samples(root: Path, split: str = "train") -> list[Sample]:
    files = sorted((root / split).rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    return [Sample(str(f), f.relative_to(root).as_posix(), classes.index(f.parent.name), f.parent.name) for f in files]


SMALL = Preprocessing(crop_size=32, resize_size=36)


# ------------------------------------------------------------------------ against the image path


@pytest.mark.slow
def test_cached_probe_equals_uncached_and_later_runs_reuse_the_cache(pets_root, tmp_path):
    runs = {}
    for name, cache in (("uncached", "false"), ("cached", "true")):
        cfg = compose_cfg("train", [*PROBE, f"data.root={pets_root}", f"finetune.cache_features={cache}"], tmp_path / name)
        runs[name] = train(cfg)
    (m_plain, o_plain), (m_cached, o_cached) = runs["uncached"], runs["cached"]
    assert not isinstance(o_plain["datamodule"], CachedFeatureDataModule)
    assert isinstance(o_cached["datamodule"], CachedFeatureDataModule)
    assert {s["hit"] for s in o_cached["datamodule"].stats.values()} == {False}
    torch.testing.assert_close(o_cached["model"].head[1].weight, o_plain["model"].head[1].weight, atol=1e-5, rtol=1e-4)
    for key in ("test/acc", "test/mean_class_acc", "test/top5", "val/best_mean_class_acc", "params/trainable", "params/total"):
        assert m_cached[key] == pytest.approx(m_plain[key], abs=1e-5), key
    assert (tmp_path / "cached" / "checkpoints" / "last.ckpt").is_file()

    # A later job of a sweep (another learning rate) reads every split from the cache.
    cfg = compose_cfg("train", [*PROBE, f"data.root={pets_root}", "optimizer.lr=0.05"], tmp_path / "sweep-job")
    _, objects = train(cfg)
    stats = objects["datamodule"].stats
    assert set(stats) == {"train", "val", "test"} and all(s["hit"] for s in stats.values())
    assert {s["key"] for s in stats.values()} == {s["key"] for s in o_cached["datamodule"].stats.values()}


# ------------------------------------------------------------------------ the decision


@pytest.mark.parametrize(
    "overrides, applies, reason",
    [
        (["finetune=linear_probe", "data.augment.enabled=false"], True, "extracted once"),
        (["finetune=linear_probe", "finetune.cache_views=2"], True, "2 augmented views"),
        (["finetune=linear_probe", "finetune.cache_views=2", "data.augment.enabled=false"], True, "no random augmentation"),
        (["finetune=linear_probe"], True, "no random augmentation"),  # data.augment.enabled=auto: off for a probe
        (["finetune=linear_probe", "data.augment.enabled=true"], False, "data.augment.enabled=true"),
        (["finetune=linear_probe", "data.augment.enabled=false", "finetune.cache_features=false"], False, "cache_features=false"),
        (["finetune=full", "data.augment.enabled=false"], False, "backbone blocks train"),
        (["finetune=gradual", "data.augment.enabled=false"], False, "backbone blocks train"),
    ],
)
def test_decision_says_why(overrides, applies, reason, folder_root, tmp_path):
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}", *overrides], tmp_path)
    datamodule = instantiate_node(cfg.data, "data")
    model = build_classifier(cfg, datamodule.num_classes, datamodule.classes)
    decided, why = cache_decision(model.schedule.protocol(), model, datamodule)
    assert decided is applies and reason in why


# ------------------------------------------------------------------------ keys


def test_key_changes_with_everything_that_changes_features(folder_root, tmp_path):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    samples = folder_samples(folder_root)
    spec = FeatureSpec(eval_transform(SMALL))
    digest = module_digest(backbone)
    key, description = feature_key(digest, samples, spec)
    assert feature_key(module_digest(backbone), samples, FeatureSpec(eval_transform(SMALL)))[0] == key  # deterministic
    assert description["samples"] == len(samples)

    variants = {
        "transform": (digest, samples, FeatureSpec(eval_transform(Preprocessing(crop_size=40, resize_size=44)))),
        "precision": (digest, samples, FeatureSpec(eval_transform(SMALL), precision="bf16-mixed")),
        "views": (digest, samples, FeatureSpec(train_transform(SMALL, Augmentation()), views=2, seed=0)),
        "subset": (digest, samples[:-1], spec),
        "decoder": (digest, samples, FeatureSpec(eval_transform(SMALL), decode_on_device=True)),
    }
    trained = TinyBackbone()
    trained.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        trained.conv.bias[0] += 1e-3
    variants["weights"] = (module_digest(trained), samples, spec)
    keys = {name: feature_key(*args)[0] for name, args in variants.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(keys)

    # A file replaced in place (new size/mtime, same name) changes the key too.
    copy = [Sample(str(tmp_path / "a.jpg"), s.rel, s.label, s.group) if i == 0 else s for i, s in enumerate(samples)]
    Image.open(samples[0].path).save(tmp_path / "a.jpg")
    before = feature_key(digest, copy, spec)[0]
    Image.open(samples[1].path).save(tmp_path / "a.jpg", quality=50)
    os.utime(tmp_path / "a.jpg", ns=(1, 1))
    assert feature_key(digest, copy, spec)[0] != before


# ------------------------------------------------------------------------ extraction


def test_augmented_views_are_seeded_per_image(folder_root):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    samples = folder_samples(folder_root)[:6]
    spec = FeatureSpec(train_transform(SMALL, Augmentation()), views=2, seed=7)
    rng_before = torch.get_rng_state()
    full = extract_features(backbone, samples, spec, batch_size=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is untouched
    assert full.shape == (2, 6, TinyBackbone.num_features)
    assert not torch.allclose(full[0], full[1])  # two different random views
    # The same views whatever the batching, subset or worker count: seeded per (view, image).
    part = extract_features(backbone, samples, spec, indices=[4, 1], batch_size=1, num_workers=1)
    torch.testing.assert_close(part, full[:, [4, 1]])
    assert backbone.training  # train/eval flags restored


def test_shards_of_several_ranks_merge_into_one_cache_file(tmp_path):
    n, world = 7, 2
    truth = torch.arange(n * 3, dtype=torch.float32).reshape(1, n, 3)
    labels = torch.arange(n) % 2
    cache = FeatureCache(tmp_path)
    barrier = threading.Barrier(world)
    shared: dict[str, object] = {}
    asked: dict[int, list[int]] = {}
    results: dict[int, torch.Tensor] = {}

    def rank_main(rank: int) -> None:
        def extract(indices: list[int]) -> torch.Tensor:
            asked[rank] = indices
            return truth[:, indices]

        def broadcast(value):  # rank 0's value to every rank, as torch.distributed would
            if rank == 0:
                shared["value"] = value
            barrier.wait()
            return shared["value"]

        features, hit = load_or_extract(cache, "k", {}, n, extract, labels, rank=rank, world=world, barrier=barrier.wait,
                                        broadcast=broadcast)
        results[rank] = features.features

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(asked[0] + asked[1]) == list(range(n)) and not set(asked[0]) & set(asked[1])
    for rank in range(world):
        torch.testing.assert_close(results[rank], truth)
    assert not list((tmp_path / "shards").glob("*.pt"))  # shards removed after the merge
    # A later single-process run reads the merged file without extracting.
    features, hit = load_or_extract(cache, "k", {}, n, lambda idx: pytest.fail("extracted again"), labels)
    assert hit and torch.equal(features.features, truth)


def test_damaged_cache_file_is_extracted_again(tmp_path):
    cache = FeatureCache(tmp_path)
    labels = torch.tensor([0, 1])
    cache.path("k").parent.mkdir(parents=True, exist_ok=True)
    cache.path("k").write_bytes(b"not a torch file")
    calls = []
    features, hit = load_or_extract(cache, "k", {}, 2, lambda idx: calls.append(idx) or torch.ones(1, 2, 4), labels)
    assert not hit and calls == [[0, 1]] and torch.equal(features.features, torch.ones(1, 2, 4))
    assert cache.load("k") is not None  # rewritten whole


def test_device_decoding_matches_the_pil_pipeline(folder_root, tmp_path):
    samples = folder_samples(folder_root)[:5]
    png = tmp_path / "x.png"
    Image.open(samples[0].path).save(png)  # not a JPEG: decoded by the PIL fallback
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(samples[1].path).read_bytes()[:200])  # truncated JPEG
    samples += [Sample(str(png), "x.png", samples[0].label, samples[0].group),
                Sample(str(broken), "broken.jpg", samples[1].label, samples[1].group)]
    pil = ImageListDataset(samples, eval_transform(SMALL))
    reference = torch.stack([pil[i][0] for i in range(len(samples))])
    decoded = torch.cat(list(device_decoded_batches(samples, range(len(samples)), SMALL, "cpu", batch_size=3, num_workers=1)))
    assert decoded.shape == reference.shape
    # Tensor and PIL antialiased resizes differ by rounding only (normalised units, std ~0.22).
    assert (decoded - reference).abs().mean() < 0.03
    # The truncated file is replaced by another image of its class, as the PIL pipeline does.
    torch.testing.assert_close(decoded[-1], reference[-1], atol=0.2, rtol=0)


def test_cached_datamodule_serves_the_image_loaders_batches(folder_root, tmp_path):
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}", "data.augment.enabled=false", "data.batch_size=4"],
                      tmp_path)
    images = instantiate_node(cfg.data, "data")
    images.set_preprocessing(SMALL)
    backbone = TinyBackbone().eval()
    cached = CachedFeatureDataModule(images, backbone, cache_dir=tmp_path / "features")
    cached.setup("fit")
    torch.manual_seed(3)
    image_batches = [(backbone(x), y) for x, y in images.train_dataloader()]
    torch.manual_seed(3)
    feature_batches = list(cached.train_dataloader())
    assert len(image_batches) == len(feature_batches)
    for (f_img, y_img), (f_cached, y_cached) in zip(image_batches, feature_batches):
        assert torch.equal(y_img, y_cached)  # same shuffled order
        torch.testing.assert_close(f_cached, f_img.detach(), atol=1e-5, rtol=1e-4)
    assert OmegaConf.create(cached.describe())["feature_cache"]["splits"]["train"]["hit"] is False


@pytest.mark.slow
def test_ddp_ranks_extract_shards_that_merge_into_the_single_process_features(tmp_path):
    # 3 test images on 2 ranks: the test loop's sampler repeats one, predictions.csv must not.
    generated = generate_folder(tmp_path / "data", classes=3, images_per_class=5, min_size=48, max_size=64, seed=0)
    probe = [*FAST, "data=folder", f"data.root={generated.root}", "finetune=linear_probe", "data.augment.enabled=false",
             "trainer.max_epochs=1"]
    ddp = run_cli(
        "tlresearch.train", *probe, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'ddp'}",
        env={"TLRESEARCH_CACHE": str(tmp_path / "ddp-cache")},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in ddp.stdout + ddp.stderr  # two processes really ran
    # Rank 0 made the checkpoints whole before rank 1 tested the best one.
    assert not list((tmp_path / "ddp" / "checkpoints").glob("frozen-*.pt"))
    train(compose_cfg("train", [*probe, f"paths.cache_dir={tmp_path / 'single-cache'}"], tmp_path / "single"))
    # predictions.csv of the DDP run == evaluating its checkpoint in one process: each test image once.
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    eval_cfg = compose_cfg("evaluate", [f"ckpt_path={ddp_metrics['best_checkpoint']}", "data=folder", f"data.root={generated.root}",
                                        "data.num_workers=0", "trainer.enable_progress_bar=false"], tmp_path / "eval")
    evaluated, objects = evaluate(eval_cfg)
    assert len(objects["datamodule"].dataset("test")) == 3
    by_ddp = check_predictions(tmp_path / "eval", evaluated, objects["datamodule"])
    alone = read_predictions(tmp_path / "ddp" / "predictions.csv")
    assert (alone.paths, alone.labels.tolist(), alone.predictions.tolist()) == (by_ddp.paths, by_ddp.labels.tolist(),
                                                                                by_ddp.predictions.tolist())
    for key in ("test/acc_ci_low", "test/acc_ci_high", "test/mean_class_acc_ci_low", "test/mean_class_acc_ci_high"):
        assert ddp_metrics[key] == evaluated[key]  # the same 3 predictions, the same seed

    def stored(cache: Path) -> dict[str, torch.Tensor]:
        return {p.name: torch.load(p, weights_only=True)["features"] for p in (cache / "features").glob("*.pt")}

    sharded, single = stored(tmp_path / "ddp-cache"), stored(tmp_path / "single-cache")
    assert set(sharded) == set(single) and len(single) == 3  # same keys: train, val, test
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], atol=1e-5, rtol=1e-4)
    assert not list((tmp_path / "ddp-cache" / "features" / "shards").glob("*"))


def test_training_epochs_cycle_through_the_cached_augmented_views(folder_root, tmp_path):
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}", "data.batch_size=4"], tmp_path)
    images = instantiate_node(cfg.data, "data")
    images.set_preprocessing(SMALL)
    cached = CachedFeatureDataModule(images, TinyBackbone().eval(), cache_dir=tmp_path / "features", views=2, seed=0)
    cached.setup("fit")
    train_set, val_set = cached.features("train"), cached.features("val")
    assert train_set.num_views == 2 and val_set.num_views == 1
    assert not torch.allclose(train_set.features[0], train_set.features[1])  # two random crops per image
    dataset = cached.train_dataloader().dataset
    for epoch in (0, 1, 2):
        cached.trainer = SimpleNamespace(current_epoch=epoch)
        x, _ = dataset.__getitems__([0, 3])
        torch.testing.assert_close(x, train_set.features[epoch % 2, [0, 3]])
