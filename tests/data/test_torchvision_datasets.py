"""The literature's transfer datasets through the real ``torchvision.datasets`` classes, on
generated copies in each dataset's exact on-disk format (data/generate_torchvision.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import FAST, compose_cfg
from tlresearch.core.errors import ConfigError
from tlresearch.data.datamodule import primary_metrics
from tlresearch.data.generate import main as generate_main
from tlresearch.data.torchvision_sources import SOURCES
from tlresearch.train import train

#: Trained one epoch by the real train task (arrays read from the torchvision object, and image
#: files with a mean-per-class metric); the others are built through their torchvision class and
#: trained one epoch on a linear model (CI's time budget).
TRAINED = ("cifar10", "flowers102")
TINY = ["backbone.input_size=32", "trainer.max_epochs=1", "data.batch_size=8", "data.download=false", "data.verify_checksums=false"]


def generated(name: str, root: Path, per_class: int = 6) -> list[str]:
    assert generate_main([name, str(root), "--num-classes", "3", "--images-per-class", str(per_class)]) == 0
    extra = ["data.train_per_class=4", "data.val_per_class=1"] if name == "caltech101" else []
    return [f"data={name}", f"data.root={root}", *extra]


def datamodule(name: str, root: Path, tmp_path: Path, *extra: str):
    cfg = compose_cfg("train", [*FAST, *TINY, *generated(name, root), *extra], tmp_path / "run")
    return instantiate(cfg.data)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_a_dataset_trains_one_epoch_through_its_torchvision_class_and_reports_its_primary_metric(name, tmp_path):
    cfg = compose_cfg("train", [*FAST, *TINY, *generated(name, tmp_path / "data")], tmp_path / "run")
    metrics, objects = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    expected = "mean_class_acc" if name in ("flowers102",) else "acc"
    assert written["data/metric"] == expected
    assert written["test/primary"] == written[f"test/{expected}"]
    assert written["test/primary_ci_low"] == written[f"test/{expected}_ci_low"]
    assert objects["datamodule"].describe()["torchvision_class"] == SOURCES[name].cls
    assert written["data/test_images"] > 0


@pytest.mark.parametrize("name", sorted(set(SOURCES) - set(TRAINED)))
def test_every_other_dataset_trains_one_epoch_through_its_torchvision_class(name, tmp_path):
    dm = datamodule(name, tmp_path / "data", tmp_path)
    dm.setup()
    assert dm.num_classes == (10 if name == "svhn" else 2 if name == "pcam" else 3)
    assert all(len(dm.dataset(split)) > 0 for split in ("train", "val", "test"))
    assert dm.describe()["torchvision_class"] == SOURCES[name].cls
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(dm.num_classes))
    model(next(iter(dm.train_dataloader()))[0])  # materialise the lazy layer before the optimizer sees it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = 0
    for images, labels in dm.train_dataloader():  # one epoch: every training image once
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        seen += len(labels)
    assert seen == len(dm.dataset("train"))
    with torch.no_grad():  # and the evaluation loaders deliver every image with a valid label
        for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
            labels = torch.cat([batch[1] for batch in loader])
            assert len(labels) == len(dm.dataset(split)) and 0 <= labels.min() and labels.max() < dm.num_classes


def test_vtab1k_draws_fixed_train_and_val_counts_and_vtab1k_full_trains_on_both(tmp_path):
    common = ("data.subset_train=12", "data.subset_val=6")
    root = tmp_path / "data"
    first = datamodule("cifar10", root, tmp_path, "data.subset=vtab1k", *common)
    again = datamodule("cifar10", root, tmp_path, "data.subset=vtab1k", *common)
    other_seed = datamodule("cifar10", root, tmp_path, "data.subset=vtab1k", "data.seed=1", *common)
    full = datamodule("cifar10", root, tmp_path, "data.subset=vtab1k_full", *common)
    whole = datamodule("cifar10", root, tmp_path)
    for dm in (first, again, other_seed, full, whole):
        dm.setup()
    assert [len(first.dataset(s)) for s in ("train", "val")] == [12, 6]
    assert first.describe()["split_sha256"] == again.describe()["split_sha256"]
    assert first.describe()["split_sha256"]["train"] != other_seed.describe()["split_sha256"]["train"]
    assert len(full.dataset("train")) == 18 and len(full.dataset("val")) == 0
    assert {s.rel for s in full.dataset("train").samples} == {s.rel for s in first.dataset("train").samples + first.dataset("val").samples}
    assert len(first.dataset("test")) == len(whole.dataset("test"))  # the test set stays whole
    with pytest.raises(ConfigError, match="data.subset=vtab1k: the train"):
        small = datamodule("cifar10", root, tmp_path, "data.subset=vtab1k")  # 800 + 200 from 18 images
        small.setup()


def test_a_root_without_the_files_says_how_to_get_them(tmp_path):
    cfg = compose_cfg("train", [*FAST, "data=dtd", f"data.root={tmp_path / 'empty'}", "data.download=false"], tmp_path / "run")
    dm = instantiate(cfg.data)
    with pytest.raises(ConfigError, match=r"data.download=true.*python -m tlresearch.data.generate dtd"):
        dm.setup()
    cars = instantiate(compose_cfg("train", ["data=cars", f"data.root={tmp_path / 'none'}", "data.download=true"], tmp_path / "r2").data)
    with pytest.raises(ConfigError, match="broken upstream"):
        cars.prepare_data()  # never touches the network: torchvision's StanfordCars cannot download


def test_aliases_and_the_metric_the_literature_reports(tmp_path):
    metric = {name: compose_cfg("train", [f"data={name}"], tmp_path).data.metric for name in [*SOURCES, "cars", "aircraft"]}
    assert {name for name, m in metric.items() if m == "mean_class_acc"} == {"fgvc_aircraft", "aircraft", "flowers102", "caltech101"}
    assert compose_cfg("train", ["data=aircraft"], tmp_path).data.dataset == "fgvc_aircraft"
    assert compose_cfg("train", ["data=cars"], tmp_path).data.dataset == "stanford_cars"
    assert primary_metrics({"data/metric": "mean_class_acc", "test/mean_class_acc": 0.5, "test/acc": 0.7}) == {"test/primary": 0.5}


def test_vtab1k_works_the_same_for_pets(pets_root, tmp_path):
    cfg = compose_cfg("train", [*FAST, "data=pets", f"data.root={pets_root}", "data.download=false", "data.subset=vtab1k",
                                "data.subset_train=10", "data.subset_val=5"], tmp_path / "run")
    dm = instantiate(cfg.data)
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val")] == [10, 5] and dm.describe()["subset"] == "vtab1k"
