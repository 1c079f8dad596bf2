"""A checkpoint can never run code: hostile files are refused, with a clear message and nothing
written, by every entry point that reads one (train's ckpt_path= and resume=auto, evaluate,
predict, visualize, and TransferClassifier.load_from_checkpoint). Legitimate checkpoints still
load: tests/test_entry_points.py (evaluate, predict), tests/test_resume.py (resume) and
tests/imageopt/test_cli.py (visualize) load real ones; here a tiny one and an own package's."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.utils import instantiate
from PIL import Image

from tests.helpers import FAST, compose_cfg
from tlresearch.checkpoints.storage import FROZEN_STATE
from tlresearch.core.errors import ConfigError
from tlresearch.evaluate import evaluate
from tlresearch.finetune.full import FullFinetune
from tlresearch.models.checkpoint_targets import CHECKPOINT_TARGETS, check_checkpoint_targets
from tlresearch.models.classifier import TransferClassifier, load_classifier
from tlresearch.predict import predict
from tlresearch.runner.entry import config_dir
from tlresearch.train import train
from tlresearch.visualize import visualize

BACKBONE = {"_target_": "tlresearch.models.torchvision_backbones.create_backbone", "name": "resnet18", "weights": None, "input_size": 32}
HPARAMS = {
    "backbone": BACKBONE, "num_classes": 3, "class_names": ["a", "b", "c"],
    "finetune": {"_target_": "tlresearch.finetune.linear_probe.LinearProbe"},
    "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    "scheduler": {"_target_": "tlresearch.models.schedulers.cosine", "_partial_": True},
}
FROZEN_ID = "0123456789ab" * 2


class OwnSchedule(FullFinetune):
    """A user's own freeze schedule, outside tlresearch: only loads with trust_targets=[tests]."""


def write_text_node(target: Path) -> dict:
    """A node that Hydra would turn into ``Path(target).write_text("pwned")``."""
    return {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(target)]}, "data": "pwned"}


def full_checkpoint(hparams: dict, state: dict) -> dict:
    """What Lightning writes, enough for every reader (resume needs the loop and optimizer state)."""
    return {"state_dict": state, "hyper_parameters": hparams, "optimizer_states": [], "loops": {}, "global_step": 3,
            "pytorch-lightning_version": pl.__version__}


def rewrite_pickle(src: Path, dst: Path, change: Callable[[bytes], bytes]) -> None:
    """``src`` (a torch.save zip) with its data.pkl changed, as a crafted file would be."""
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, change(data) if info.filename.endswith("data.pkl") else data)
    dst.write_bytes(out.getvalue())


def exec_pickle(target: Path) -> bytes:
    """A pickle whose loading calls builtins.exec (a GLOBAL opcode), which would write ``target``."""
    code = f"open({str(target)!r}, 'w').write('x')".encode()
    return b"\x80\x02cbuiltins\nexec\nX" + struct.pack("<I", len(code)) + code + b"\x85R."


@pytest.fixture(scope="module")
def legit(tmp_path_factory) -> dict:
    """A tiny legitimate checkpoint (tensors and hparams), built once."""
    model = TransferClassifier(**HPARAMS)
    folder = tmp_path_factory.mktemp("legit")
    torch.save(full_checkpoint(dict(model.hparams), model.state_dict()), folder / "legit.ckpt")
    return {"path": folder / "legit.ckpt", "state": model.state_dict(), "model": model}


def _hostile_hparams(pwned: Path) -> dict[str, tuple[dict, str]]:
    return {
        "write_text": ({**HPARAMS, "finetune": write_text_node(pwned)},
                       r"hyper_parameters\.finetune\._target_='pathlib\.Path\.write_text'"),
        "nested_target": ({**HPARAMS, "backbone": {**BACKBONE, "name": write_text_node(pwned)}},
                          r"hyper_parameters\.backbone\.name\._target_"),
        "partial_callable": ({**HPARAMS, "optimizer": {**write_text_node(pwned), "_partial_": True, "lr": 0.1}},
                             r"hyper_parameters\.optimizer\._target_='pathlib\.Path\.write_text'"),
        "args": ({**HPARAMS, "backbone": {**BACKBONE, "_args_": [write_text_node(pwned)]}}, r"hyper_parameters\.backbone\._args_"),
        "through_an_import": ({**HPARAMS, "finetune": {"_target_": "tlresearch.finetune.full.os.system", "_args_": [f"touch {pwned}"]}},
                              r"hyper_parameters\.finetune\._target_='tlresearch\.finetune\.full\.os\.system'"),
        "interpolation": ({**HPARAMS, "backbone": {**BACKBONE, "name": "${oc.env:HOME}"}},
                          r"hyper_parameters\.backbone\.name='\$\{oc\.env:HOME\}'"),
        "own_package_untrusted": ({**HPARAMS, "finetune": {"_target_": f"{__name__}.OwnSchedule"}}, r"trust_targets=\[<package>\]"),
    }


@pytest.fixture(scope="module")
def hostile(legit, tmp_path_factory) -> dict:
    """Each hostile case as ``<case>/checkpoints/last.ckpt`` (with what lies beside it), built once:
    name -> (run folder, message fragment). Running any would write ``pwned``."""
    root = tmp_path_factory.mktemp("hostile")
    pwned = root / "pwned"
    cases: dict[str, tuple[Path, str]] = {}

    def folder(name: str, fragment: str) -> Path:
        (root / name / "checkpoints").mkdir(parents=True)
        cases[name] = (root / name, fragment)
        return root / name / "checkpoints"

    for name, (hparams, fragment) in _hostile_hparams(pwned).items():
        torch.save(full_checkpoint(hparams, legit["state"]), folder(name, fragment) / "last.ckpt")
    # Frozen-state files named out of the checkpoint's folder: each holds the real tensors, so only the check refuses them.
    state = legit["state"]
    frozen_key = next(iter(state))
    out_of_folder = (("frozen_dotdot", "../frozen-0123456789ab.pt"), ("frozen_absolute", None),
                     ("frozen_symlink", "frozen-0123456789ab.pt"))
    for name, file_name in out_of_folder:
        ckpts = folder(name, "frozen-state file")
        outside = ckpts.parent / "elsewhere" / "frozen-0123456789ab.pt"
        outside.parent.mkdir()
        torch.save({"id": FROZEN_ID, "state_dict": {frozen_key: state[frozen_key]}}, outside)
        shutil.copy(outside, ckpts.parent / "frozen-0123456789ab.pt")
        if name == "frozen_symlink":
            os.symlink(outside, ckpts / file_name)
        reference = {"file": file_name or str(outside), "id": FROZEN_ID, "keys": [frozen_key], "order": list(state)}
        rest = {k: v for k, v in state.items() if k != frozen_key}
        torch.save({**full_checkpoint(HPARAMS, rest), FROZEN_STATE: reference}, ckpts / "last.ckpt")
    # A tensor whose header claims 8 GB of storage that the file does not hold.
    small = root / "small.ckpt"
    torch.save(full_checkpoint(HPARAMS, {"w": torch.zeros(7)}), small)
    huge = b"J" + struct.pack("<i", 2**31 - 1)  # the storage's element count (before TUPLE), the shape (before TUPLE1)
    rewrite_pickle(small, folder("huge_storage_header", "could not be read") / "last.ckpt",
                   lambda pkl: pkl.replace(b"K\x07t", huge + b"t", 1))
    rewrite_pickle(small, folder("huge_tensor_shape_header", "could not be read") / "last.ckpt",
                   lambda pkl: pkl.replace(b"K\x07t", huge + b"t", 1).replace(b"K\x07\x85", huge + b"\x85", 1))
    data = legit["path"].read_bytes()
    (folder("truncated", "not a complete zip archive") / "last.ckpt").write_bytes(data[: len(data) // 2])
    (folder("bare_pickle_global", "bare pickle") / "last.ckpt").write_bytes(exec_pickle(pwned))
    rewrite_pickle(legit["path"], folder("zip_pickle_global", "could run code") / "last.ckpt", lambda _: exec_pickle(pwned))
    return {"cases": cases, "pwned": pwned}


def _train(run: Path, tmp: Path, resume_auto: bool) -> None:
    where = ["resume=auto"] if resume_auto else [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    out = tmp / "run"
    if resume_auto:
        shutil.copytree(run, out, symlinks=True)
    # No data at data.root: the checkpoint is refused before the data is built.
    train(compose_cfg("train", [*FAST, f"data.root={tmp / 'no-data'}", *where], out))


ENTRY_POINTS: dict[str, Callable[[Path, Path], object]] = {
    "train_ckpt_path": lambda run, tmp: _train(run, tmp, resume_auto=False),
    "train_resume_auto": lambda run, tmp: _train(run, tmp, resume_auto=True),
    "evaluate": lambda run, tmp: evaluate(compose_cfg("evaluate", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                                                                   f"data.root={tmp / 'no-data'}"], tmp / "run")),
    "predict": lambda run, tmp: predict(compose_cfg("predict", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                                                                f"images=[{tmp / 'x.jpg'}]"], tmp / "run")),
    "visualize": lambda run, tmp: visualize(compose_cfg("visualize", ["task=ideal", "target=[0]", "steps=1",
                                                                      f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], tmp / "run")),
    "load_from_checkpoint": lambda run, tmp: TransferClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt"),
}
CASES = [*_hostile_hparams(Path("x")), "frozen_dotdot", "frozen_absolute", "frozen_symlink", "huge_storage_header",
         "huge_tensor_shape_header", "truncated", "bare_pickle_global", "zip_pickle_global"]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", CASES)
def test_a_hostile_checkpoint_is_refused_by_every_entry_point_and_nothing_is_written(hostile, case, entry, tmp_path):
    run, fragment = hostile["cases"][case]
    with pytest.raises(ConfigError, match=fragment) as error:
        ENTRY_POINTS[entry](run, tmp_path)
    assert "\n" not in str(error.value) and len(str(error.value)) < 1200  # one clear paragraph
    assert not hostile["pwned"].exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_the_crafted_checkpoint_would_write_its_file_if_it_were_built(tmp_path):
    """The write_text case is a real attack: instantiating its node writes the file."""
    instantiate(write_text_node(tmp_path / "pwned"))
    assert (tmp_path / "pwned").read_text() == "pwned"


def test_a_legitimate_checkpoint_loads_and_an_own_package_with_trust_targets(legit, hostile, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    expected = legit["model"].state_dict()
    for model in (load_classifier(legit["path"]), TransferClassifier.load_from_checkpoint(legit["path"])):
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    own = hostile["cases"]["own_package_untrusted"][0] / "checkpoints" / "last.ckpt"
    assert isinstance(load_classifier(own, trust_targets=["tests"]).schedule, OwnSchedule)
    assert isinstance(TransferClassifier.load_from_checkpoint(own, trust_targets=["tests"]).schedule, OwnSchedule)
    metrics, _ = predict(compose_cfg("predict", [f"ckpt_path={own}", f"images=[{image}]", "trust_targets=[tests]"], tmp_path / "own"))
    assert metrics["status"] == "completed"
    with pytest.raises(ConfigError, match=r"trust_targets='tests' is invalid"):
        load_classifier(own, trust_targets="tests")


def _targets(node, path: str = ""):
    """(group, node) of every mapping with a ``_target_`` in a yaml tree."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else str(key))


def test_every_target_the_configs_put_into_a_checkpoint_passes_the_allow_list():
    """conf/<group>/*.yaml of each group the classifier instantiates, and what experiments set
    under them: the allow-list cannot go stale. (Trainer, callbacks, loggers and data never
    reach a checkpoint's hyper-parameters.)"""
    conf = Path(config_dir())
    seen = set()
    for file in sorted(conf.rglob("*.yaml")):
        tree = yaml.safe_load(file.read_text()) or {}
        group = file.relative_to(conf).parts[0]
        for path, node in _targets(tree):
            key = group if group in CHECKPOINT_TARGETS and path == "" else path.split(".")[-1]
            if key in CHECKPOINT_TARGETS:
                check_checkpoint_targets({key: node}, str(file))
                seen.add((key, node["_target_"]))
    assert {k for k, _ in seen} == set(CHECKPOINT_TARGETS) and len(seen) >= 12, seen
