"""Exact resume: a run SIGKILLed mid-epoch and resumed with ``resume=auto`` ends bitwise equal to
an uninterrupted run (CPU, ``trainer.deterministic=true``), across a gradual-unfreezing boundary.

The pieces (data order and augmentation as functions of (seed, epoch, image), the position in
the DataModule's checkpointed state, RNG states) are unit-tested first; the end-to-end test
kills real subprocesses.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import submitit
import torch
from hydra.core.utils import JobReturn, JobStatus
from torch.utils.data import Dataset, DistributedSampler

from tests.helpers import FAST, REPO, compose_cfg, run_cli, run_in_process
from tlresearch.checkpoints.resume import capture_rng_states, check_resume_checkpoint, restore_rng_states
from tlresearch.checkpoints.storage import read_checkpoint
from tlresearch.core.errors import ConfigError
from tlresearch.data.sampler import (
    ResumableDataLoader,
    ResumableRandomSampler,
    ResumableTrainData,
    SeededDataset,
    SeededIndex,
    restore_position,
    shuffled_loader,
)
from tlresearch.models.classifier import TransferClassifier, load_classifier
from tlresearch.runner.loggers import continue_logs, wandb_logger
from tlresearch.train import train


class RandomDraws(Dataset):
    """Item i is (i, a draw from torch's, numpy's and python's global RNGs): what a random
    augmentation would see."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple[int, float, float, float]:
        return i, float(torch.rand(())), float(np.random.rand()), random.random()


def epoch_items(loader, epoch: int) -> list[tuple]:
    loader.sampler.set_epoch(epoch)
    return [tuple(float(v) for v in row) for batch in loader for row in zip(*batch)]


def test_order_and_augmentation_depend_only_on_seed_epoch_and_image():
    a, b = shuffled_loader(RandomDraws(), seed=3, batch_size=4), shuffled_loader(RandomDraws(), seed=3, batch_size=4)
    epoch1 = epoch_items(a, 1)
    assert epoch_items(b, 1) == epoch1  # no state carried over from other epochs (b skipped epoch 0)
    assert sorted(int(row[0]) for row in epoch1) == list(range(10))
    assert epoch_items(a, 2) != epoch1
    other_seed = epoch_items(shuffled_loader(RandomDraws(), seed=4, batch_size=4), 1)
    assert [row[0] for row in other_seed] != [row[0] for row in epoch1]
    # An image's augmentation does not depend on where it falls in the order.
    draws = {row[0]: row[1:] for row in epoch1}
    assert len({row[1:] for row in epoch1}) == 10
    assert {row[0]: row[1:] for row in epoch_items(shuffled_loader(RandomDraws(), seed=3, batch_size=3), 1)} == draws


def test_augmentation_neither_uses_nor_disturbs_the_global_rng():
    loader = shuffled_loader(RandomDraws(), seed=0, batch_size=5)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = capture_rng_states()
    first = epoch_items(loader, 0)
    after = capture_rng_states()
    assert torch.equal(before["torch"], after["torch"]) and before["numpy"] == after["numpy"] and before["python"] == after["python"]
    torch.manual_seed(999)
    assert epoch_items(loader, 0) == first


def test_worker_processes_give_the_same_batches():
    with_workers = shuffled_loader(RandomDraws(), seed=0, batch_size=4, num_workers=2)
    assert epoch_items(with_workers, 1) == epoch_items(shuffled_loader(RandomDraws(), seed=0, batch_size=4), 1)


def test_restored_position_continues_the_epoch_exactly():
    full = epoch_items(shuffled_loader(RandomDraws(), seed=5, batch_size=4), 2)
    source = shuffled_loader(RandomDraws(), seed=5, batch_size=4)
    source.sampler.set_progress(2, 8)  # two batches of epoch 2 trained on
    resumed = shuffled_loader(RandomDraws(), seed=0, batch_size=4)  # seed comes from the state
    resumed.load_state_dict(source.state_dict())
    assert [tuple(float(v) for v in row) for batch in resumed for row in zip(*batch)] == full[8:]
    assert len(resumed) == 3  # Lightning counts batches from the restored progress: length stays the whole epoch's
    # A complete epoch continues with the next one, from its start.
    source.sampler.set_progress(2, 10)
    after_epoch = shuffled_loader(RandomDraws(), seed=0, batch_size=4)
    after_epoch.load_state_dict(source.state_dict())
    assert after_epoch.sampler.epoch == 3
    assert [tuple(float(v) for v in row) for batch in after_epoch for row in zip(*batch)] == epoch_items(
        shuffled_loader(RandomDraws(), seed=5, batch_size=4), 3)


def test_datamodule_state_positions_the_next_train_loader():
    class Data(ResumableTrainData):
        pass

    running = Data()
    loader = running.resumable_train_loader(RandomDraws(), seed=1, batch_size=2)
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.dataset, SeededDataset)
    loader.sampler.set_progress(0, 6)
    state = running.state_dict()
    restarted = Data()
    restarted.load_state_dict(state)
    resumed = restarted.resumable_train_loader(RandomDraws(), seed=1, batch_size=2)
    assert [int(i) for batch in resumed for i in batch[0]] == [int(i) for batch in loader for i in batch[0]][6:]
    again = restarted.resumable_train_loader(RandomDraws(), seed=1, batch_size=2)  # the position is used once
    assert len([i for batch in again for i in batch[0]]) == 10


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    states = capture_rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"rng": states}, tmp_path / "rng.ckpt")
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    restore_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_sampler_yields_seeded_indices_and_keeps_random_sampler_semantics():
    sampler = ResumableRandomSampler(range(7), seed=0)
    items = list(sampler)
    assert all(isinstance(item, SeededIndex) for item in items)
    assert sorted(item.index for item in items) == list(range(7)) and len(sampler) == 7


def test_under_ddp_each_process_takes_its_shard_of_the_same_seeded_order(caplog):
    world, n = 3, 10
    single = ResumableRandomSampler(range(n), seed=4)
    single.set_epoch(2)
    shards = []
    for rank in range(world):
        sampler = ResumableRandomSampler(range(n), seed=4, num_replicas=world, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert isinstance(sampler, DistributedSampler) and len(sampler) == 4  # Lightning keeps it; ceil(10 / 3)
    # DistributedSampler's layout over the single-process order: positions r, r + W, ... of it,
    # padded with its first images; each image keeps its own augmentation seed.
    padded = list(single) + list(single)[:2]
    assert shards == [padded[rank::world] for rank in range(world)]
    # A shard resumes mid-epoch where its process stopped ...
    stopped = ResumableRandomSampler(range(n), seed=4, num_replicas=world, rank=1)
    stopped.set_progress(2, 3)
    rank1 = ResumableRandomSampler(range(n), seed=0, num_replicas=world, rank=1)
    resumed = ResumableDataLoader(SeededDataset(RandomDraws()), sampler=rank1)
    restore_position(resumed, stopped.state_dict())
    assert list(resumed.sampler) == shards[1][3:]
    # ... and a position saved with another number of processes restarts the epoch, saying so.
    other = ResumableDataLoader(SeededDataset(RandomDraws()), sampler=ResumableRandomSampler(range(n), seed=0, num_replicas=2, rank=1))
    restore_position(other, stopped.state_dict())
    assert len(list(other.sampler)) == 5 and "restarts from its first batch" in caplog.text


# ---------------------------------------------------------------------------------- end to end

#: 18 training images in batches of 4: 5 steps per epoch, 15 in all. Gradual unfreezing: layer4
#: joins at epoch 1, layer3 at epoch 2. Dropout draws from the global RNG in every training step.
RESUMABLE = [*FAST, "data=folder", "data.batch_size=4", "trainer.max_epochs=3", "trainer.deterministic=true",
             "finetune=gradual", "finetune.start_epoch=1", "finetune.max_blocks=2", "model.dropout=0.3",
             "callbacks.last_checkpoint.every_n_train_steps=2"]
LAYER3, LAYER4 = "backbone.model.layer3.0.conv1.weight", "backbone.model.layer4.0.conv1.weight"


def read_last(run_dir: Path) -> dict:
    """``last.ckpt`` complete (the frozen blocks a stopped run keeps in its frozen-state file put back)."""
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def read_csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_tensors(a, b, where: str = "") -> None:
    """``a`` and ``b`` (nested dicts/lists of tensors and plain values) are bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(folder_root, tmp_path_factory) -> tuple[Path, dict]:
    """The run of :data:`RESUMABLE` without interruption (with TensorBoard too): its directory and metrics."""
    reference_dir = tmp_path_factory.mktemp("uninterrupted")
    reference, _ = train(compose_cfg("train", [*RESUMABLE, f"data.root={folder_root}", "logger=tensorboard"], reference_dir))
    return reference_dir, reference


def assert_same_end(run_dir: Path, resumed: dict, reference_dir: Path, reference: dict) -> None:
    """The resumed run ends as the uninterrupted one: metrics, weights, optimizer, scheduler."""
    assert resumed["status"] == "completed" and resumed["global_step"] == reference["global_step"] == 15
    compared = [k for k, v in reference.items() if k.startswith(("test/", "val/")) and isinstance(v, float)]
    assert len(compared) >= 6
    assert {k: resumed[k] for k in compared} == {k: reference[k] for k in compared}
    final, expected = read_last(run_dir), read_last(reference_dir)
    assert_same_tensors(final["state_dict"], expected["state_dict"], "state_dict")
    assert_same_tensors(final["optimizer_states"], expected["optimizer_states"], "optimizer")
    assert_same_tensors(final["lr_schedulers"], expected["lr_schedulers"], "lr_scheduler")


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(folder_root, tmp_path, uninterrupted):
    overrides = [*RESUMABLE, f"data.root={folder_root}"]
    reference_dir, reference = uninterrupted

    # SIGKILLed just before step 8, in epoch 1 while layer4 trains: last.ckpt is step 6's, so the
    # resumed run restores epoch 1's schedule mid-epoch, redoes step 7, then crosses into epoch 2
    # where layer3 unfreezes.
    run_dir = tmp_path / "killed"
    cli = [*overrides, f"hydra.run.dir={run_dir}", "resume=auto"]
    killed = run_cli("tlresearch.train", *cli, "+callbacks.killer._target_=tests.probes.KillAtStep", "+callbacks.killer.at_step=7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    at_kill = read_last(run_dir)
    assert at_kill["global_step"] == 6
    # Killed: layer3 (still frozen) stayed in the run's frozen-state file, which the resume reads.
    assert LAYER3 not in torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(load_classifier(run_dir / "checkpoints" / "last.ckpt").state_dict()[LAYER3], at_kill["state_dict"][LAYER3])
    assert not (run_dir / "metrics.json").exists()  # killed: no record, so a table shows the run as missing
    resumed_run = run_cli("tlresearch.train", *cli)
    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]

    assert list((run_dir / "checkpoints").glob("frozen-*.pt")) == []  # finished: self-contained checkpoints
    assert_same_end(run_dir, json.loads((run_dir / "metrics.json").read_text()), reference_dir, reference)
    final = read_last(run_dir)
    # Both blocks trained after the resume (the comparison is not one of frozen weights).
    assert not torch.equal(final["state_dict"][LAYER4], at_kill["state_dict"][LAYER4])
    assert not torch.equal(final["state_dict"][LAYER3], at_kill["state_dict"][LAYER3])

    # metrics.csv: the killed part's rows, then the resumed part's, as in the uninterrupted run,
    # the training averages of epoch 1 (resumed mid-epoch) included: last.ckpt carries their
    # running states (models/epoch_averages.py).
    rows, expected_rows = read_csv_rows(run_dir), read_csv_rows(reference_dir)
    assert len(rows) == len(expected_rows) == 37
    assert rows == expected_rows

    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["run"]["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert provenance["previous"]["run"]["resumed_from"] is None  # the killed first part


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every TensorBoard event of ``tag`` in the run, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_sigterm_writes_last_ckpt_exits_143_and_resumes_to_the_uninterrupted_result(folder_root, tmp_path, uninterrupted):
    reference_dir, reference = uninterrupted
    overrides = [*RESUMABLE, f"data.root={folder_root}", "logger=tensorboard"]
    run_dir = tmp_path / "terminated"
    # SIGTERM during step 7, mid-epoch 1: last.ckpt is written after it (steps due: every 2nd only).
    stopped = run_cli("tlresearch.train", *overrides, f"hydra.run.dir={run_dir}",
                      "+callbacks.term._target_=tests.probes.TermAtStep", "+callbacks.term.at_step=6")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert read_last(run_dir)["global_step"] == 7
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "resume=auto" in record["error"]

    resumed, _ = train(compose_cfg("train", [*overrides, "resume=auto"], run_dir))
    assert_same_end(run_dir, resumed, reference_dir, reference)
    # Each step is logged once: TensorBoard purged the events after step 7 that the resume replays,
    # CSV kept the rows before it (the training aggregates of the resumed epoch aside).
    for tag in ("train/loss_step", "lr-SGD/head"):
        assert scalars(run_dir, tag) == scalars(reference_dir, tag), tag
    steps = [(r["step"], r["epoch"]) for r in read_csv_rows(run_dir)]
    assert steps == [(r["step"], r["epoch"]) for r in read_csv_rows(reference_dir)]


def fake_slurm(bin_dir: Path, scontrol_log: Path) -> dict[str, str]:
    """SLURM's commands, faked on PATH: ``sbatch`` accepts job 4242, ``srun`` runs its command here,
    ``sacct`` knows nothing (submitit then waits for the job's result file), ``scontrol`` records its
    arguments."""
    bin_dir.mkdir()
    tools = {"sbatch": "echo 'Submitted batch job 4242'",
             "srun": 'while [ "${1#--}" != "$1" ]; do [ "$1" = --unbuffered ] && shift || shift 2; done; exec "$@"',
             "sacct": "exit 0", "scontrol": f'echo "$@" >> {scontrol_log}'}
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def run_slurm_job(script: Path, env: dict[str, str], restarts: int) -> subprocess.CompletedProcess:
    """SLURM running submitit's sbatch script as job 4242 (one task on one node), for the ``restarts``-th time."""
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1",
             "SLURM_NODELIST": "localhost", "SLURM_RESTART_COUNT": str(restarts), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["bash", str(script)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env, **slurm})


@pytest.mark.slow
def test_slurm_warning_writes_last_ckpt_requeues_and_the_requeued_job_ends_as_uninterrupted(
        folder_root, tmp_path, uninterrupted, monkeypatch, capsys):
    """hydra/launcher=slurm, offline: the sweep submits its job through the launcher and submitit
    (fake sbatch); the job runs submitit's sbatch script, gets SLURM's warning (SIGUSR2) mid-epoch,
    writes last.ckpt and requeues itself (fake scontrol); the requeued job, started again as SLURM
    would, ends as an uninterrupted run, and submitit reads its result."""
    reference_dir, reference = uninterrupted
    scontrol_log = tmp_path / "scontrol.log"
    env = fake_slurm(tmp_path / "bin", scontrol_log)
    sweep = tmp_path / "sweep"
    # The sweep command, in this process; it does not wait for the job (the job runs below).
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setattr(submitit.SlurmJob, "results", lambda job: [JobReturn(status=JobStatus.COMPLETED)])
    code, output = run_in_process("tlresearch.train", [
        "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
        "hydra.launcher.timeout_min=1", "hydra.launcher.max_num_timeout=1",  # at the time limit: requeued once
        *RESUMABLE, f"data.root={folder_root}",
        "+callbacks.term._target_=tests.probes.TermAtStep", "+callbacks.term.at_step=6", "+callbacks.term.signum=SIGUSR2",
    ], capsys)
    assert code == 0, output[-3000:]
    script = sweep / ".submitit" / "4242" / "4242_submission.sh"
    assert "#SBATCH --signal=USR2@120" in script.read_text()

    # SIGUSR2 during step 7, mid-epoch 1: last.ckpt after it, then submitit requeues (exit -1).
    first = run_slurm_job(script, env, restarts=0)
    assert first.returncode == 255, first.stderr[-3000:]
    assert scontrol_log.read_text().split() == ["requeue", "4242"]
    run_dir = sweep / "0"
    assert read_last(run_dir)["global_step"] == 7
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "requeue" in record["error"]
    job = submitit.SlurmJob(sweep / ".submitit" / "%j", "4242")
    assert not job.paths.result_pickle.exists()  # not over: submitit waits for the requeued job

    # SLURM starts the requeued job: the same script and the submission submitit pickled again.
    second = run_slurm_job(script, env, restarts=1)
    assert second.returncode == 0, second.stderr[-3000:]
    assert scontrol_log.read_text().split() == ["requeue", "4242"]  # not requeued again
    monkeypatch.undo()
    assert job.result().status == JobStatus.COMPLETED  # what the sweep command collects
    assert_same_end(run_dir, json.loads((run_dir / "metrics.json").read_text()), reference_dir, reference)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["run"]["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")


def test_a_resumed_wandb_run_continues_the_same_run_and_skips_logged_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = wandb_logger(str(tmp_path), offline=True)
    for step in range(4):
        first.log_metrics({"train/loss": float(step)}, step=step)
    run_id = first.experiment.id
    first.experiment.finish()
    assert json.loads((tmp_path / "wandb_run_id").read_text()) == {"id": run_id, "step": 3, "keys": ["train/loss"]}

    resumed = wandb_logger(str(tmp_path), offline=True)
    continue_logs([resumed], 2)  # resumed from step 2's checkpoint: steps 2 and 3 are replayed
    assert resumed.experiment.id == run_id
    logged: list[int] = []
    monkeypatch.setattr(resumed.experiment, "log", lambda row, **_: logged.append(row["trainer/global_step"]))
    for step in range(2, 6):
        resumed.log_metrics({"train/loss": float(step)}, step=step)
    resumed.experiment.finish()
    assert logged == [4, 5]


def test_a_resumed_csv_log_keeps_the_rows_before_the_resumed_step_and_appends(tmp_path):
    from tlresearch.runner.loggers import ResumableCSVLogger

    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    for step in range(5):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    resumed = ResumableCSVLogger(tmp_path, name="csv", version="")
    resumed.continue_from(3)  # steps 3 and 4 are logged again by the resumed run
    resumed.log_metrics({"train/loss": 30.0, "val/acc": 0.5}, step=3)  # a new column widens the header
    resumed.save()
    rows = read_csv_rows(tmp_path)
    assert [(r["step"], r["train/loss"], r["val/acc"]) for r in rows] == [
        ("0", "0.0", ""), ("1", "1.0", ""), ("2", "2.0", ""), ("3", "30.0", "0.5")
    ]
    fresh = ResumableCSVLogger(tmp_path, name="csv", version="")  # not resumed: a new log, as Lightning's
    fresh.log_metrics({"train/loss": 7.0}, step=0)
    fresh.save()
    assert [r["train/loss"] for r in read_csv_rows(tmp_path)] == ["7.0"]


def test_a_checkpoint_that_names_its_backbone_family_by_source_still_resumes(tmp_path):
    """Checkpoints of earlier versions store ``backbone: {_target_: ...backbones.create_backbone,
    source: torchvision}``; today's configs name the family's own factory. Same run, same settings."""
    today = {"_target_": "tlresearch.models.torchvision_backbones.create_backbone", "name": "resnet18", "weights": None, "input_size": 32}
    model = TransferClassifier(
        backbone=today, num_classes=3, finetune={"_target_": "tlresearch.finetune.linear_probe.LinearProbe"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )

    def checkpoint_with(backbone: dict) -> Path:
        path = tmp_path / f"{backbone['name']}.ckpt"
        hparams = {**dict(model.hparams), "backbone": backbone}
        torch.save({"state_dict": {}, "optimizer_states": [], "loops": {}, "global_step": 7, "hyper_parameters": hparams}, path)
        return path

    legacy = {**today, "_target_": "tlresearch.models.backbones.create_backbone", "source": "torchvision"}
    assert check_resume_checkpoint(checkpoint_with(legacy), model) == 7
    with pytest.raises(ConfigError, match=r"backbone\.name: 'resnet50' in the checkpoint, 'resnet18' now"):
        check_resume_checkpoint(checkpoint_with({**legacy, "name": "resnet50"}), model)
