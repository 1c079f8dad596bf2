"""Checkpoints write frozen weights once per run, read back complete, and end self-contained."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, compose_cfg
from tests.probes import CheckpointFolderProbe
from tlresearch.checkpoints.storage import FROZEN_KEYS, FROZEN_STATE, AtomicCheckpointIO, read_checkpoint
from tlresearch.core.errors import ConfigError
from tlresearch.models.classifier import load_classifier
from tlresearch.train import train

PROBE = ["+callbacks.folder_probe._target_=tests.probes.CheckpointFolderProbe"]


def frozen_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("frozen-*.pt"))


def on_disk(path: Path) -> dict:
    """A checkpoint file as stored (``torch.load``), not completed by our readers."""
    return torch.load(path, map_location="cpu", weights_only=True)


def run_with_probe(folder_root: Path, tmp_path: Path, *extra: str) -> tuple[dict, dict, CheckpointFolderProbe]:
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={folder_root}", "trainer.max_epochs=3", *PROBE, *extra], tmp_path)
    metrics, objects = train(cfg)
    probe = next(c for c in objects["trainer"].callbacks if isinstance(c, CheckpointFolderProbe))
    return metrics, objects, probe


@pytest.mark.slow
def test_a_linear_probe_writes_its_frozen_backbone_once_and_ends_with_complete_checkpoints(folder_root, tmp_path):
    metrics, objects, probe = run_with_probe(folder_root, tmp_path, "finetune=linear_probe")
    model = objects["model"]
    backbone_keys = [k for k in model.state_dict() if k.startswith("backbone.")]
    folder = tmp_path / "checkpoints"

    # During the run: one frozen-state file, written before epoch 1 and reused at epoch 2; each
    # last.ckpt keeps only what trains (the head) and refers to that file for the backbone.
    sidecars = {epoch: [f for f in files if f.startswith("frozen-")] for epoch, files in probe.files.items()}
    assert len(sidecars[1]) == 1 and sidecars[2] == sidecars[1], probe.files
    for epoch, stored in probe.last.items():
        assert stored[FROZEN_STATE]["file"] == sidecars[1][0]
        assert set(stored[FROZEN_STATE]["keys"]) == set(backbone_keys)
        assert set(stored["state_dict"]) == {"head.1.weight", "head.1.bias"}, epoch
        assert FROZEN_KEYS not in stored  # the module's hint is never written

    # After fit: every checkpoint is complete on disk, and the frozen-state file is gone.
    assert frozen_files(folder) == []
    checkpoints = sorted(folder.glob("*.ckpt"))
    assert [p.name for p in checkpoints] != [] and metrics["test/checkpoint"] in map(str, checkpoints)
    expected = model.state_dict()
    for path in checkpoints:
        stored = on_disk(path)
        assert FROZEN_STATE not in stored
        assert list(stored["state_dict"]) == list(expected)  # the original key order
        for key in backbone_keys:
            assert torch.equal(stored["state_dict"][key], expected[key]), (path.name, key)
    assert metrics["test/acc"] > 0


@pytest.mark.slow
def test_full_fine_tuning_writes_complete_checkpoints_throughout(folder_root, tmp_path):
    _, objects, probe = run_with_probe(folder_root, tmp_path, "finetune=full")
    assert all(not f.startswith("frozen-") for files in probe.files.values() for f in files), probe.files
    assert all(FROZEN_STATE not in stored and set(stored["state_dict"]) == set(objects["model"].state_dict())
               for stored in probe.last.values())


@pytest.mark.slow
def test_gradual_unfreezing_refers_to_fewer_frozen_tensors_as_blocks_unfreeze(folder_root, tmp_path):
    metrics, objects, probe = run_with_probe(folder_root, tmp_path, "finetune=gradual")
    layer4 = "backbone.model.layer4.0.conv1.weight"
    epoch1, epoch2 = probe.last[1], probe.last[2]
    # Epoch 0 trained the head only; epoch 1 trained layer4 too, which is then stored in last.ckpt.
    assert layer4 in epoch1[FROZEN_STATE]["keys"] and layer4 not in epoch1["state_dict"]
    assert layer4 in epoch2["state_dict"] and layer4 not in epoch2[FROZEN_STATE]["keys"]
    assert epoch2[FROZEN_STATE]["file"] == epoch1[FROZEN_STATE]["file"]  # still the one file
    assert frozen_files(tmp_path / "checkpoints") == []
    expected = objects["model"].state_dict()  # the best checkpoint's weights, which the test loaded
    best = on_disk(Path(metrics["test/checkpoint"]))["state_dict"]
    assert list(best) == list(expected) and all(torch.equal(best[k], v) for k, v in expected.items())
    assert list(on_disk(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]) == list(expected)


# ------------------------------------------------------------------------------ the writer and readers


def checkpoint_of(state: dict[str, torch.Tensor], frozen: list[str], step: int = 0) -> dict:
    """What Lightning hands the writer: a state_dict and the module's hint."""
    return {"global_step": step, "state_dict": dict(state), FROZEN_KEYS: frozen}


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return {"backbone.w": torch.randn(64, 64), "backbone.bn.running_mean": torch.randn(64), "head.w": torch.randn(3, 64)}


def test_changed_frozen_tensors_are_written_again(tmp_path, state):
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint_of(state, ["backbone.w", "backbone.bn.running_mean"]), tmp_path / "a.ckpt")
    io.save_checkpoint(checkpoint_of(state, ["backbone.w", "backbone.bn.running_mean"], 1), tmp_path / "b.ckpt")
    assert len(frozen_files(tmp_path)) == 1  # unchanged: the file is reused
    before = state["backbone.w"].clone()
    state["backbone.w"].add_(1.0)  # an in-place change (the version counter moves)
    io.save_checkpoint(checkpoint_of(state, ["backbone.w", "backbone.bn.running_mean"], 2), tmp_path / "c.ckpt")
    assert len(frozen_files(tmp_path)) == 2
    assert torch.equal(read_checkpoint(tmp_path / "b.ckpt")["state_dict"]["backbone.w"], before)
    assert torch.equal(io.load_checkpoint(tmp_path / "c.ckpt")["state_dict"]["backbone.w"], state["backbone.w"])
    state["backbone.w"] = torch.zeros(64, 64)  # a new tensor under the same key
    io.save_checkpoint(checkpoint_of(state, ["backbone.w", "backbone.bn.running_mean"], 3), tmp_path / "d.ckpt")
    assert torch.equal(read_checkpoint(tmp_path / "d.ckpt")["state_dict"]["backbone.w"], torch.zeros(64, 64))

    rewritten = io.make_self_contained()
    assert [p.name for p in rewritten] == ["a.ckpt", "b.ckpt", "c.ckpt", "d.ckpt"] and frozen_files(tmp_path) == []
    assert torch.equal(on_disk(tmp_path / "b.ckpt")["state_dict"]["backbone.w"], before)
    assert list(on_disk(tmp_path / "d.ckpt")["state_dict"]) == list(state)


def test_a_checkpoint_without_its_frozen_state_file_says_what_to_copy(tmp_path, state):
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint_of(state, ["backbone.w"]), tmp_path / "run" / "last.ckpt")
    sidecar = frozen_files(tmp_path / "run")[0]
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "run" / "last.ckpt", tmp_path / "copy" / "last.ckpt")
    for read in (lambda p: read_checkpoint(p), lambda p: io.load_checkpoint(p), load_classifier):
        with pytest.raises(ConfigError, match=f"frozen layers in {sidecar}.*missing.*Copy {sidecar}"):
            read(tmp_path / "copy" / "last.ckpt")


def test_a_frozen_state_file_of_another_run_is_refused(tmp_path, state):
    AtomicCheckpointIO().save_checkpoint(checkpoint_of(state, ["backbone.w"]), tmp_path / "a" / "last.ckpt")
    AtomicCheckpointIO().save_checkpoint(checkpoint_of(state, ["backbone.w"]), tmp_path / "b" / "last.ckpt")
    ours, theirs = frozen_files(tmp_path / "a")[0], tmp_path / "b" / frozen_files(tmp_path / "b")[0]
    shutil.copy(theirs, tmp_path / "a" / ours)
    with pytest.raises(ConfigError, match="belongs to another run"):
        read_checkpoint(tmp_path / "a" / "last.ckpt")


def test_checkpoints_that_cannot_be_rewritten_keep_their_frozen_state_file(tmp_path, state, monkeypatch, caplog):
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint_of(state, ["backbone.w"]), tmp_path / "last.ckpt")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with caplog.at_level(logging.WARNING):
        assert io.make_self_contained() == []
    assert "No space left on device" in caplog.text and "still load" in caplog.text
    monkeypatch.undo()
    assert len(frozen_files(tmp_path)) == 1
    assert torch.equal(read_checkpoint(tmp_path / "last.ckpt")["state_dict"]["backbone.w"], state["backbone.w"])


def test_checkpoints_without_frozen_tensors_are_written_whole(tmp_path, state):
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint_of(state, []), tmp_path / "a.ckpt")
    io.save_checkpoint({"global_step": 0, "state_dict": state}, tmp_path / "b.ckpt")
    assert frozen_files(tmp_path) == [] and io.make_self_contained() == []
    assert all(list(on_disk(tmp_path / n)["state_dict"]) == list(state) for n in ("a.ckpt", "b.ckpt"))


def test_checkpoints_are_whole_when_written_if_a_logger_uploads_them_during_fit(tmp_path, state):
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from tlresearch.train import checkpoint_io_for

    assert checkpoint_io_for([CSVLogger(tmp_path)]).frozen_once
    assert checkpoint_io_for([WandbLogger(save_dir=tmp_path, offline=True, log_model=False)]).frozen_once
    for log_model in (True, "all"):
        io = checkpoint_io_for([CSVLogger(tmp_path), WandbLogger(save_dir=tmp_path, log_model=log_model)])
        io.save_checkpoint(checkpoint_of(state, ["backbone.w"]), tmp_path / "last.ckpt")
        assert frozen_files(tmp_path) == [] and list(on_disk(tmp_path / "last.ckpt")["state_dict"]) == list(state)


def test_a_new_writer_makes_an_earlier_processes_checkpoints_whole(tmp_path, state):
    AtomicCheckpointIO().save_checkpoint(checkpoint_of(state, ["backbone.w"]), tmp_path / "last.ckpt")  # a killed process
    assert AtomicCheckpointIO().make_self_contained([tmp_path]) == [tmp_path / "last.ckpt"]
    assert frozen_files(tmp_path) == [] and list(on_disk(tmp_path / "last.ckpt")["state_dict"]) == list(state)


@pytest.mark.slow
def test_a_run_stopped_after_its_last_checkpoint_ends_whole_when_resumed(folder_root, tmp_path):
    overrides = [*FAST, "data=folder", f"data.root={folder_root}", "finetune=linear_probe", "resume=auto"]
    train(compose_cfg("train", overrides, tmp_path))
    # As if killed after the last epoch's checkpoints, before they were made whole.
    folder = tmp_path / "checkpoints"
    for path in folder.glob("*.ckpt"):
        ckpt = read_checkpoint(path)
        ckpt[FROZEN_KEYS] = [k for k in ckpt["state_dict"] if k.startswith("backbone.")]
        AtomicCheckpointIO().save_checkpoint(ckpt, path)
    assert frozen_files(folder) and all(FROZEN_STATE in on_disk(p) for p in folder.glob("*.ckpt"))
    metrics, _ = train(compose_cfg("train", overrides, tmp_path))  # nothing left to fit
    assert metrics["status"] == "completed" and metrics["test/acc"] > 0
    assert frozen_files(folder) == [] and all(FROZEN_STATE not in on_disk(p) for p in folder.glob("*.ckpt"))


def test_a_frozen_inference_tensor_is_written_with_every_checkpoint(tmp_path, state):
    # A buffer created under torch.inference_mode has no version counter to prove it unchanged.
    with torch.inference_mode():
        state["backbone.cache"] = torch.arange(4.0)
    io = AtomicCheckpointIO()
    for step in range(2):
        io.save_checkpoint(checkpoint_of(state, ["backbone.w", "backbone.cache"], step), tmp_path / "last.ckpt")
    assert len(frozen_files(tmp_path)) == 2
    assert torch.equal(read_checkpoint(tmp_path / "last.ckpt")["state_dict"]["backbone.cache"], torch.arange(4.0))
