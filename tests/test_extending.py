"""CONTRIBUTING.md's three recipes, done: a dataset, a backbone family and a freeze schedule,
each one yaml plus one small Python file, and nothing else in the tree edited.

The new files go into a temporary package (on ``sys.path``) and a temporary config folder (on
Hydra's search path), not into ``src/tlresearch`` and ``conf/``: that the run below finds and
uses them proves that no other file needed to change.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import REPO, compose_cfg
from tests.probes import BackboneStateProbe
from tlresearch.data.generate import render_image
from tlresearch.train import train

PACKAGE = "extending_demo"

#: The new files, as a contributor would write them (here under ``PACKAGE`` instead of
#: ``tlresearch.data`` / ``tlresearch.models`` / ``tlresearch.finetune``).
SOURCES = {
    # --- a dataset known by its folder layout: the Kaggle "Dogs vs. Cats" competition's train/cat.0.jpg
    "named_files.py": '''
        """Images named ``<class>.<number>.jpg`` in ``root/train/`` (Kaggle's Dogs vs. Cats competition layout)."""

        from __future__ import annotations

        from pathlib import Path, PurePosixPath

        from tlresearch.core.errors import ConfigError
        from tlresearch.data.scanned import ScannedImageDataModule

        FOLDER = "train"


        class NamedFilesDataModule(ScannedImageDataModule):
            """Classes are the file-name prefixes; val/test are carved out by the fractions."""

            name = "named_files"
            _rel_prefix = f"{FOLDER}/"

            def _read_classes(self) -> list[str]:
                folder = self.root / FOLDER
                if not folder.is_dir():
                    raise ConfigError(
                        f"data.root={str(self.root)!r} is invalid: it has no {FOLDER}/ folder; "
                        f"put the images in <root>/{FOLDER}/<class>.<number>.jpg."
                    )
                return sorted({p.name.split(".")[0] for p in folder.iterdir() if p.name.count(".") >= 2})

            def _scan_root(self) -> Path:
                return self.root / FOLDER

            def _locate(self, rel: PurePosixPath) -> tuple[str | None, str] | None:
                label = rel.name.split(".")[0]
                return (None, label) if len(rel.parts) == 1 and label in self._classes else None
    ''',
    # --- a backbone family: a small CNN trained from scratch (nothing to download)
    "tiny_cnn_backbones.py": '''
        """A small CNN family, trained from scratch: stem and two stages, each conv-BN-ReLU-pool."""

        from __future__ import annotations

        from collections import OrderedDict

        from torch import nn

        from tlresearch.core.config import require
        from tlresearch.core.errors import ConfigError, suggest
        from tlresearch.data.transforms import Preprocessing
        from tlresearch.models.backbone import Backbone, Block, apply_input_size, wants_pretrained

        WIDTHS = {"tiny_cnn_s": 8, "tiny_cnn_m": 16}  # name -> the stem's channels


        def _stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))


        def create_backbone(name: str, weights: str | None = None, input_size: int | None = None) -> Backbone:
            """The family's factory, named by conf/backbone/tiny_cnn.yaml."""
            if name not in WIDTHS:
                raise ConfigError(f"backbone.name={name!r} is invalid: use one of {sorted(WIDTHS)}.{suggest(name, WIDTHS)}")
            require(not wants_pretrained(weights), "backbone.weights", weights, "this family has no pretrained weights; use null.")
            w = WIDTHS[name]
            model = nn.Sequential(OrderedDict(
                stem=_stage(3, w), stage1=_stage(w, 2 * w), stage2=_stage(2 * w, 4 * w),
                pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            ))
            backbone = Backbone(
                model, name=name, source="tiny_cnn", weights=None, num_features=4 * w,
                preprocessing=Preprocessing(crop_size=32, resize_size=36),
                blocks=[Block(n, (n,)) for n in ("stem", "stage1", "stage2")],
            )
            return apply_input_size(backbone, input_size)
    ''',
    # --- a freeze schedule: the head and the backbone's last block(s) train, the rest stays frozen
    "top_blocks.py": '''
        """Top blocks: the head and the backbone's last ``blocks`` blocks train; the blocks below stay frozen."""

        from __future__ import annotations

        from tlresearch.core.config import check_int, require
        from tlresearch.finetune.base import FreezeSchedule, GroupSpec


        class TopBlocks(FreezeSchedule):
            """Head and the last ``blocks`` backbone blocks from epoch 0 (at LR x ``backbone_lr_mult``); the rest frozen."""

            name = "top_blocks"

            def __init__(self, blocks: int = 1, backbone_lr_mult: float = 1.0) -> None:
                self.blocks = check_int("finetune.blocks", blocks, minimum=1)
                require(backbone_lr_mult > 0, "finetune.backbone_lr_mult", backbone_lr_mult, "use a number > 0.")
                self.backbone_lr_mult = backbone_lr_mult

            def backbone_groups(self, blocks):
                first = len(blocks) - self.blocks
                return [
                    GroupSpec(f"backbone.{name}", params, self.backbone_lr_mult, 0) if i >= first
                    else GroupSpec(f"backbone.{name}", params, 0.0, None)
                    for i, (name, params) in enumerate(blocks)
                ]
    ''',
}

CONFIGS = {
    "data/named_files.yaml": f'''
        # Images named <class>.<number>.jpg in root/train/ ({PACKAGE}/named_files.py). Files are checked
        # once (a manifest, as for cats_dogs); val/test are carved out of train by the fractions.
        _target_: {PACKAGE}.named_files.NamedFilesDataModule  # the DataModule class this config builds
        root: ???                     # required: the folder holding train/
        download: false               # unused (nothing to download); kept so every data config has the same keys
        filter: decodes               # decodes: keep every file PIL fully decodes | jfif: also require the JFIF marker
        val_fraction: 0.2             # in [0, 1): share of each class held out for val
        test_fraction: 0.2            # in [0, 1): share of each class held out for test
        cache_dir: ${{paths.cache_dir}}/datasets  # where the manifest is written | null: <root>/.tlresearch
        seed: 0                       # int: fixes the splits
        max_per_class: null           # null: all | int >= 1: at most this many TRAIN images per class
        in_memory: false              # true: decode every image once into RAM | false: read files every epoch
        batch_size: 8                 # int >= 1: images per batch, every split
        num_workers: 0                # auto | int >= 0: DataLoader worker processes
        pin_memory: false             # auto | true | false: DataLoader pin_memory
        augment:                      # training augmentation (data/transforms.py:Augmentation)
          enabled: true               # true | false
          scale: [0.5, 1.0]           # RandomResizedCrop area range
          hflip: true                 # random horizontal flip
          color_jitter: 0.0           # >= 0: colour jitter strength
          trivial_augment: false      # true | false: add TrivialAugmentWide
    ''',
    "backbone/tiny_cnn.yaml": f'''
        # A small CNN trained from scratch ({PACKAGE}/tiny_cnn_backbones.py): nothing to download.
        _target_: {PACKAGE}.tiny_cnn_backbones.create_backbone  # the family's factory
        name: tiny_cnn_s          # tiny_cnn_s (8 channels in the stem) | tiny_cnn_m (16)
        weights: null             # null only: the family has no pretrained weights
        input_size: null          # crop size override in pixels; null = 32
    ''',
    "finetune/top_blocks.yaml": f'''
        # The head and the backbone's last block(s) train; the blocks below stay frozen ({PACKAGE}/top_blocks.py).
        _target_: {PACKAGE}.top_blocks.TopBlocks
        blocks: 1                 # int >= 1: how many of the backbone's last blocks train
        backbone_lr_mult: 1.0     # > 0: LR multiplier of those blocks
    ''',
}


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def generate_named_files(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 10) -> None:
    """``root/train/<class>.<n>.jpg`` with a learnable class signal (tlresearch.data.generate's images)."""
    folder = root / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        for number in range(per_class):
            render_image(rng, index, index, (40, 48)).save(folder / f"{name}.{number}.jpg", quality=90)


@pytest.fixture
def extension(tmp_path, monkeypatch) -> Path:
    """The new files: the package on sys.path; returns the config folder to add to Hydra's search path."""
    write_files(tmp_path / "pkg" / PACKAGE, {"__init__.py": "", **SOURCES})
    write_files(tmp_path / "conf", CONFIGS)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    yield tmp_path / "conf"
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_a_new_dataset_backbone_family_and_freeze_schedule_train_without_editing_the_tree(extension, tmp_path):
    data_root = tmp_path / "images"
    generate_named_files(data_root)
    overrides = [
        f"hydra.searchpath=[file://{extension}]",
        "data=named_files", f"data.root={data_root}",
        "backbone=tiny_cnn",
        "finetune=top_blocks",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "+callbacks.state_probe._target_=tests.probes.BackboneStateProbe",
    ]
    run_dir = tmp_path / "run"
    metrics, objects = train(compose_cfg("train", overrides, run_dir))

    model, datamodule = objects["model"], objects["datamodule"]
    assert metrics["status"] == "completed" and 0.0 <= metrics["test/acc"] <= 1.0
    # the new classes did the work
    assert type(datamodule).__module__ == f"{PACKAGE}.named_files" and datamodule.classes == ["cat", "dog"]
    assert datamodule.describe()["num_samples"] == {"train": 12, "val": 4, "test": 4}
    assert model.backbone.describe() == {"name": "tiny_cnn_s", "source": "tiny_cnn", "weights": None, "num_features": 32}
    assert type(model.schedule).__module__ == f"{PACKAGE}.top_blocks"
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["backbone"] == model.backbone.describe() and provenance["schedule"]["name"] == "top_blocks"

    # the schedule: stem and stage1 frozen (weights and BatchNorm statistics bitwise unchanged), stage2 trained
    probe = next(c for c in objects["trainer"].callbacks if isinstance(c, BackboneStateProbe))
    assert [(g.name, g.start_epoch) for g in model.groups] == [
        ("head", 0), ("backbone.stem", None), ("backbone.stage1", None), ("backbone.stage2", 0)
    ]
    blocks = {b.name: b for b in model.backbone.blocks}
    final = model.backbone.model.state_dict()
    for name in ("stem", "stage1"):
        keys = [k for k in probe.start if blocks[name].owns(k)]
        assert keys and all(torch.equal(probe.start[k], probe.end[k]) and torch.equal(probe.start[k], final[k]) for k in keys), name
    trained = [k for k in probe.start if blocks["stage2"].owns(k)]
    assert not any(torch.equal(probe.start[k], probe.end[k]) for k in trained if k.endswith(("weight", "running_mean")))


#: Modules the recipes import that another branch of the house move creates.
PENDING: set[str] = set()


def test_the_recipes_in_contributing_md_are_valid_and_import_what_exists():
    text = (REPO / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"```(python|yaml)\n(.*?)```", text, flags=re.S)
    assert {kind for kind, _ in blocks} == {"python", "yaml"}
    for kind, code in blocks:
        if kind == "yaml":
            assert "_target_" in yaml.safe_load(code)
            continue
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("tlresearch") and node.module not in PENDING:
                module = importlib.import_module(node.module)
                assert all(hasattr(module, alias.name) for alias in node.names), ast.unparse(node)
