"""Runs survive crashes, bad data and numerical faults, and their results can be traced.

* NaN loss: the run stops naming the step; last.ckpt keeps the last good state.
* Disk full / read-only output: a clear error; last.ckpt stays the previous complete file.
* Atomic files: a write that dies half-way leaves the old file and no debris.
* Safe loading: a checkpoint that would run code is refused, by our reader and Lightning's.
* Interrupted runs (Ctrl-C) record ``status: interrupted``.
* Bad images: one training run over a folder holding every kind of broken or odd file.
* Determinism, provenance and ``table --show-runs``: a real two-job sweep.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import FAST, compose_cfg, run_cli
from tlresearch.checkpoints.storage import AtomicCheckpointIO, CheckpointWriteError, read_checkpoint
from tlresearch.core.errors import ConfigError
from tlresearch.core.files import OutputWriteError, write_json_atomic
from tlresearch.runner.entry import run_task
from tlresearch.train import train

#: 18 training images in batches of 4: 5 steps per epoch; last.ckpt after every step.
STEPPED = [*FAST, "data=folder", "data.batch_size=4", "trainer.max_epochs=1", "test_after_fit=false",
           "callbacks.last_checkpoint.every_n_train_steps=1"]


def stepped(folder_root: Path, *extra: str) -> list[str]:
    return [*STEPPED, f"data.root={folder_root}", *extra]


def probe(name: str, at_step: int) -> list[str]:
    return [f"+callbacks.probe._target_=tests.probes.{name}", f"+callbacks.probe.at_step={at_step}"]


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def run_failing(cfg) -> tuple[int, dict]:
    """Run ``train`` through the CLI wrapper; return the exit code and the recorded metrics.json."""
    with pytest.raises(SystemExit) as exit_info:
        run_task(train, cfg)
    return exit_info.value.code, json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


# ------------------------------------------------------------------------------ numerical faults


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(folder_root, tmp_path, capsys):
    cfg = compose_cfg("train", stepped(folder_root, *probe("PoisonAtStep", 3)), tmp_path)
    code, record = run_failing(cfg)
    assert code == 2
    assert record["status"] == "failed"
    message = record["error"]
    # The fourth step (Lightning's global step 4 once it ran) produced the NaN.
    assert "nan" in message and "global step 4" in message and "batch 3" in message
    assert "optimizer.lr" in message and "precision" in message  # likely causes and their fixes
    assert "Traceback" not in capsys.readouterr().err
    good = last_checkpoint(tmp_path)
    assert good["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in good["state_dict"].values() if t.is_floating_point())
    assert leftovers(tmp_path / "checkpoints") == []


# ------------------------------------------------------------------------------ disk full / read-only


@pytest.fixture
def save_fails_on_call(monkeypatch):
    """``torch.save`` writes half of the file, then fails with ``error``, from call ``n`` on."""

    def arm(n: int, error: OSError) -> None:
        real_save = torch.save
        calls = {"count": 0}

        def save(obj, f, *args, **kwargs):
            calls["count"] += 1
            if calls["count"] < n:
                return real_save(obj, f, *args, **kwargs)
            import io

            buffer = io.BytesIO()
            real_save(obj, buffer)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise error

        monkeypatch.setattr(torch, "save", save)

    return arm


@pytest.mark.slow
def test_disk_full_mid_run_is_a_clear_error_and_last_ckpt_stays_complete(folder_root, tmp_path, save_fails_on_call, capsys):
    cfg = compose_cfg("train", stepped(folder_root), tmp_path)
    save_fails_on_call(3, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    code, record = run_failing(cfg)
    assert code == 2 and record["status"] == "failed"
    assert "No space left on device" in record["error"] and "last.ckpt" in record["error"] and "resume=auto" in record["error"]
    assert "Traceback" not in capsys.readouterr().err
    assert last_checkpoint(tmp_path)["global_step"] == 2  # the previous complete checkpoint
    assert leftovers(tmp_path / "checkpoints") == []


def test_read_only_output_keeps_the_previous_checkpoint(tmp_path, save_fails_on_call):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_plugin.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    save_fails_on_call(1, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    with pytest.raises(CheckpointWriteError, match="Permission denied.*intact"):
        io_plugin.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert io_plugin.load_checkpoint(path)["global_step"] == 1
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ atomic files


def test_json_write_that_dies_half_way_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"status": "completed", "test/acc": 0.5})

    def dies_half_way(self, text, *args, **kwargs):
        with open(self, "w") as fh:
            fh.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", dies_half_way)
    with pytest.raises(OutputWriteError, match=r"metrics.json \(No space left on device\).*intact.*Free disk space") as info:
        write_json_atomic(target, {"status": "completed", "test/acc": 0.9})
    monkeypatch.undo()
    # Reported like a user mistake (one paragraph, exit code 2), still an OSError for callers that tolerate it.
    assert isinstance(info.value, ConfigError) and isinstance(info.value, OSError)
    assert json.loads(target.read_text()) == {"status": "completed", "test/acc": 0.5}
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ safe loading


class _Payload:
    """Unpickling this creates a file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def code_running_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "optimizer_states": [], "payload": _Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):  # sanity: the file really holds a global
        torch.load(path, weights_only=True)
    return path, marker


def test_code_running_checkpoint_is_refused_by_every_reader(code_running_checkpoint):
    path, marker = code_running_checkpoint
    with pytest.raises(ConfigError, match="refused.*could run code"):
        read_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):  # Lightning's resume path (trainer.fit(ckpt_path=...))
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.slow
def test_resuming_from_a_code_running_checkpoint_is_refused(folder_root, tmp_path, code_running_checkpoint):
    path, marker = code_running_checkpoint
    cfg = compose_cfg("train", stepped(folder_root, f"ckpt_path={path}"), tmp_path / "run")
    with pytest.raises(ConfigError, match="ckpt_path=.*refused"):
        train(cfg)
    assert not marker.exists()


# ------------------------------------------------------------------------------ interruption


@pytest.mark.slow
def test_ctrl_c_records_status_interrupted_and_leaves_a_resumable_checkpoint(folder_root, tmp_path):
    cfg = compose_cfg("train", stepped(folder_root, *probe("InterruptAtStep", 2)), tmp_path)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        code, record = run_failing(cfg)  # Lightning shuts down gracefully, then exits with code 1
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl-C while shutting down
    assert code == 1
    assert record["status"] == "interrupted" and "resume=auto" in record["error"]
    assert last_checkpoint(tmp_path)["global_step"] == 2


# ------------------------------------------------------------------------------ bad images


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def add_bad_images(folder: Path) -> tuple[dict[str, str], list[str]]:
    """Write every kind of problem file into ``folder``: returns (dropped name -> reason category, kept names)."""
    colour = Image.new("RGB", (80, 64), (200, 40, 40))
    jpeg = encode(colour, "JPEG")
    grey16 = Image.new("I;16", (64, 64))
    grey16.putdata([i * 16 for i in range(64 * 64)])
    files = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero_bytes.jpg": b"",
        "png_named.jpg": encode(colour, "PNG"),
        "gif_named.jpg": encode(colour, "GIF"),
        "cmyk.jpg": encode(colour.convert("CMYK"), "JPEG"),
        "greyscale.jpg": encode(colour.convert("L"), "JPEG"),
        "sixteen_bit.png": encode(grey16, "PNG"),
        # 100 megapixels (over PIL's 89.5 MP bomb limit), a 12 kB file: refused before decoding.
        "bomb_100mp.png": encode(Image.new("1", (10_000, 10_000)), "PNG"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "a_directory.jpg").mkdir()
    dropped = {"truncated.jpg": "undecodable", "zero_bytes.jpg": "undecodable", "bomb_100mp.png": "undecodable",
               "a_directory.jpg": "not an image"}
    return dropped, [name for name in files if name not in dropped]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns on open; the scanner refuses it
def test_training_over_a_folder_of_bad_images_completes_and_counts_them(tmp_path):
    from tlresearch.data.generate import generate_folder

    root = tmp_path / "images"
    generate_folder(root, classes=2, images_per_class=8, min_size=64, max_size=80, seed=3)
    dropped, kept = add_bad_images(root / "train" / "class_1")
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={root}", "data.batch_size=8", "trainer.max_epochs=1"],
                      tmp_path / "run")
    metrics, objects = train(cfg)
    assert metrics["status"] == "completed" and 0 <= metrics["test/acc"] <= 1

    dataset = json.loads((tmp_path / "run" / "provenance.json").read_text())["dataset"]
    assert dataset["dropped"] == {"total": 4, "by_reason": {"not an image": 1, "undecodable": 3}}
    manifest = json.loads(Path(dataset["manifest_path"]).read_text())
    reasons = {Path(entry["path"]).name: entry["reason"].split(":")[0] for entry in manifest["dropped"]}
    assert reasons == dropped
    assert "DecompressionBomb" in next(e["reason"] for e in manifest["dropped"] if e["path"].endswith("bomb_100mp.png"))
    # The odd but decodable files are used, under their folder's label (never another class's).
    datamodule = objects["datamodule"]
    train_files = {Path(s.path).name: datamodule.classes[s.label] for s in datamodule.dataset("train").samples}
    assert {name: train_files.get(name) for name in kept} == dict.fromkeys(kept, "class_1")
    for name in kept:
        image, label = datamodule.dataset("train")[next(i for i, s in enumerate(datamodule.dataset("train").samples)
                                                         if s.path.endswith(name))]
        assert image.shape[0] == 3 and torch.isfinite(image).all() and datamodule.classes[label] == "class_1"


# ------------------------------------------------------------------------------ determinism, provenance, table


@pytest.fixture(scope="module")
def sweep(folder_root, tmp_path_factory) -> Path:
    """A real two-job sweep through the CLI: same seed and config, 0 and 1 data-loading workers."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_cli("tlresearch.train", "-m", *FAST, "data=folder", f"data.root={folder_root}", "trainer.max_epochs=1",
                     "trainer.deterministic=true", "data.num_workers=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


@pytest.mark.slow
def test_same_seed_and_config_give_identical_results_whatever_the_worker_count(sweep):
    runs = [json.loads((d / "metrics.json").read_text()) for d in job_dirs(sweep)]
    assert len(runs) == 2 and all(r["status"] == "completed" for r in runs)
    keys = [k for k, v in runs[0].items() if k.startswith(("test/", "val/")) and isinstance(v, float)]
    assert len(keys) >= 6
    assert {k: runs[0][k] for k in keys} == {k: runs[1][k] for k in keys}
    first, second = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in job_dirs(sweep))
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_every_run_directory_records_its_provenance(sweep, folder_root):
    from importlib import metadata

    from tlresearch.data.folder import ImageFolderDataModule
    from tlresearch.results.provenance import git_state

    expected = ImageFolderDataModule(root=str(folder_root), num_workers=0).describe()
    checkout = git_state()
    for job in job_dirs(sweep):
        record = json.loads((job / "provenance.json").read_text())
        config = record["config"]
        assert "${" not in json.dumps(config)  # resolved, unlike .hydra/config.yaml
        assert config["paths"]["output_dir"] == str(job) and config["seed"] == 0 and config["data"]["root"] == str(folder_root)
        assert record["packages"]["torch"] == metadata.version("torch")
        assert record["packages"]["pytorch-lightning"] == metadata.version("pytorch-lightning")
        git = record["git"]
        assert git["commit"] == checkout["commit"]  # None only outside a git checkout of tlresearch
        if checkout["commit"] is not None:
            assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool) and isinstance(git["untracked"], list)
        assert record["dataset"]["manifest_sha256"] == expected["manifest_sha256"]
        assert record["dataset"]["split_sha256"] == expected["split_sha256"] and set(expected["split_sha256"]) == {"train", "val", "test"}
        assert record["device"]["python"] == sys.version.split()[0] and record["device"]["cpu_count"] == os.cpu_count()
        assert record["run"]["accelerator"] == "CPUAccelerator" and record["run"]["deterministic"] is True
        assert record["run"]["resumed_from"] is None
        assert record["backbone"]["name"] == "resnet18"


@pytest.mark.slow
def test_table_shows_the_runs_behind_each_cell(sweep, capsys):
    from tlresearch.table import main as table_main

    assert table_main([str(sweep), "--metric", "test/acc", "--show-runs"]) == 0
    out = capsys.readouterr().out
    assert "data.num_workers" in out
    runs_section = out.split("Runs per cell:", 1)[1]
    for job in job_dirs(sweep):
        assert str(job) in runs_section
