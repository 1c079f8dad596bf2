"""conf/data/*.yaml: documented, and built by Hydra into working DataModules."""

from __future__ import annotations

import re
from pathlib import Path

import hydra.utils
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tlresearch.data.settings import auto_num_workers
from tlresearch.data.transforms import Augmentation, Preprocessing

CONF = Path(__file__).resolve().parents[2] / "conf"
DATA_CONFIGS = sorted(path.stem for path in (CONF / "data").glob("*.yaml"))  # a new dataset is checked too


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_key_is_commented(name):
    for number, line in enumerate((CONF / "data" / f"{name}.yaml").read_text().splitlines(), start=1):
        if re.match(r"\s*[A-Za-z_]+:", line):
            assert "#" in line, f"{name}.yaml line {number} has no comment: {line!r}"


def compose_data(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=[f"+data={name}", "+paths=default", *overrides])


@pytest.mark.parametrize("name, root_fixture, classes", [
    ("pets", "pets_root", 6), ("cats_dogs", "cats_dogs_root", 2), ("folder", "folder_root", 3)])
def test_hydra_builds_each_datamodule(name, root_fixture, classes, request, tmp_path, monkeypatch):
    monkeypatch.setenv("TLRESEARCH_CACHE", str(tmp_path / "cache"))
    root = request.getfixturevalue(root_fixture)
    cfg = compose_data(name, f"data.root={root}", "data.download=false", "data.batch_size=4")
    pre = Preprocessing(crop_size=32, resize_size=36)
    dm = hydra.utils.instantiate(cfg.data, preprocessing=pre)  # exactly how the train task builds it
    assert type(dm).__name__ == cfg.data._target_.rsplit(".", 1)[1]
    assert dm.num_classes == classes and dm.preprocessing == pre
    assert dm.num_workers == auto_num_workers() and dm.augmentation == Augmentation()
    dm.num_workers = 0  # keep the test light on a shared machine
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    if name != "pets":  # the manifest goes to paths.cache_dir, out of the dataset folder
        assert str(tmp_path / "cache") in dm.describe()["manifest_path"]


def test_config_defaults_match_the_constructors():
    """A key left out of the config must not silently mean something else in Python."""
    import inspect

    from tlresearch.data.cats_dogs import CatsDogsDataModule
    from tlresearch.data.datamodule import ImageClassificationDataModule
    from tlresearch.data.folder import ImageFolderDataModule
    from tlresearch.data.pets import OxfordPetsDataModule

    classes = {"pets": OxfordPetsDataModule, "cats_dogs": CatsDogsDataModule, "folder": ImageFolderDataModule}
    common = inspect.signature(ImageClassificationDataModule.__init__).parameters
    for name, cls in classes.items():
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / "data" / f"{name}.yaml"), resolve=False)
        params = {**common, **inspect.signature(cls.__init__).parameters}
        for key, value in cfg.items():
            if key in ("_target_", "root", "augment", "cache_dir") or (name == "folder" and key == "download"):
                continue
            assert key in params, f"{name}.yaml: {key} is not a constructor argument"
            assert params[key].default == value, f"{name}.yaml: {key}={value} but the constructor default is {params[key].default}"
        assert Augmentation(**{k: tuple(v) if k == "scale" else v for k, v in cfg["augment"].items()}) == Augmentation()
