"""Logs across a resume: each step once in CSV, TensorBoard and W&B, in one process and under real
DDP (2 CPU processes, gloo) resumed from a mid-epoch checkpoint, compared with an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, REPO, cli_env
from tests.sweeps.wandb_records import read_offline_run
from tlresearch.checkpoints.storage import read_checkpoint
from tlresearch.runner.loggers import continue_logs, wandb_logger


def test_a_resume_logs_to_wandb_what_the_interrupted_run_left_out_of_its_last_step(tmp_path, monkeypatch):
    """Lightning logs several dicts at one step: the LR at the batch's start, the loss at its end.
    A run killed between the two has W&B's LR of that step, not its loss: the resume logs the loss."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = wandb_logger(str(tmp_path), offline=True)
    for step in range(3):
        first.log_metrics({"lr": 0.1}, step=step)
        if step < 2:  # killed during step 2
            first.log_metrics({"loss": 1.0}, step=step)
    first.experiment.finish()

    resumed = wandb_logger(str(tmp_path), offline=True)
    continue_logs([resumed], 1)  # last.ckpt of step 1: steps 1 and 2 are replayed
    logged: list[tuple[int, list[str]]] = []
    monkeypatch.setattr(resumed.experiment, "log",
                        lambda row, **_: logged.append((row.pop("trainer/global_step"), sorted(row))))
    for step in range(1, 4):
        resumed.log_metrics({"lr": 0.1}, step=step)
        resumed.log_metrics({"loss": 1.0}, step=step)
        if step == 2:
            resumed.log_metrics({"val/acc": 0.5, "lr": 0.1}, step=step)  # keys the first run did not log there
    resumed.experiment.finish()
    assert logged == [(2, ["loss"]), (2, ["lr", "val/acc"]), (3, ["lr"]), (3, ["loss"])]


# ------------------------------------------------------------------------- DDP, end to end

#: 18 training images, 2 processes, batches of 3: 3 steps per epoch, 6 in all. last.ckpt every 2
#: steps, so step 4's is mid-epoch 1. No test phase: it logs nothing a resume replays.
DDP_RESUMABLE = [*FAST, "backbone.input_size=32", "data=folder", "data.batch_size=3", "trainer.deterministic=true",
                 "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "logger=[tensorboard,wandb]",
                 "callbacks.last_checkpoint.every_n_train_steps=2", "test_after_fit=false"]
RESUMED_STEP = 4  # the step of last.ckpt when both ranks kill themselves before step 5


def run_ranks(run_dir: Path, *args: str) -> tuple[int, int, str]:
    """``python -m tlresearch.train <args>`` into ``run_dir``, in a session of its own: rank 0, which
    starts rank 1. Waits until every process of it has closed its output. What it passes to
    ``wandb.log`` goes to ``<run_dir>/wandb_rows.jsonl``. ``(exit status, rank 0's pid, output)``."""
    recorder = [f"hydra.run.dir={run_dir}", "+callbacks.sent._target_=tests.probes.WandbLogRecorder",
                f"+callbacks.sent.path={run_dir / 'wandb_rows.jsonl'}"]
    proc = subprocess.Popen([sys.executable, "-m", "tlresearch.train", *args, *recorder], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=cli_env())
    try:
        output, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 too (a rank waiting for a dead peer)
        output, _ = proc.communicate()
        pytest.fail(f"training did not end:\n{output[-3000:]}")
    return proc.returncode, proc.pid, output


def csv_rows(run_dir: Path) -> list[tuple[int, dict[str, str]]]:
    """(step, the row's non-empty values) of each row of ``csv/metrics.csv``."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return [(int(row.pop("step")), {k: v for k, v in row.items() if v}) for row in csv.DictReader(fh)]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each scalar tag's (step, value) events, as TensorBoard shows them (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def sent_to_wandb(run_dir: Path) -> list[tuple[int, int, dict]]:
    """(rank, step, values) of each row the run passed to ``wandb.log`` (tests.probes.WandbLogRecorder)."""
    lines = (json.loads(line) for line in (run_dir / "wandb_rows.jsonl").read_text().splitlines())
    return [(line["rank"], *wandb_row(line["row"])) for line in lines]


def wandb_row(row: dict) -> tuple[int, dict]:
    """(step, values) of a W&B history row (W&B's own ``_step``, ``_runtime``... aside)."""
    return row["trainer/global_step"], {k: v for k, v in row.items() if not k.startswith("_") and k != "trainer/global_step"}


def keys_per_step(rows: list[tuple[int, dict]]) -> Counter:
    """How many times each (step, metric) was logged; ``epoch`` aside (Lightning adds it to each
    dict it logs, so it comes several times at an epoch's last step)."""
    return Counter((step, key) for step, values in rows for key in values if key != "epoch")


@pytest.mark.slow
def test_ddp_resume_from_a_mid_epoch_checkpoint_logs_each_step_once(folder_root, tmp_path):
    common = [*DDP_RESUMABLE, f"data.root={folder_root}"]
    reference_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    code, _, output = run_ranks(reference_dir, *common)
    assert code == 0, output[-3000:]
    assert "GLOBAL_RANK: 1" in output  # two processes really ran

    # Both ranks SIGKILL themselves before step 5 (a crash): last.ckpt is step 4's, mid-epoch 1.
    code, killed_pid, output = run_ranks(run_dir, *common, "resume=auto",
                                         "+callbacks.killer._target_=tests.probes.KillAtStep", "+callbacks.killer.at_step=5")
    assert code == -signal.SIGKILL, output[-3000:]
    at_kill = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert (at_kill["global_step"], at_kill["epoch"]) == (RESUMED_STEP, 1)
    killed_sent = [row[1:] for row in sent_to_wandb(run_dir)]
    code, resumed_pid, output = run_ranks(run_dir, *common, "resume=auto")
    assert code == 0, output[-3000:]
    resumed, reference = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference_dir))
    assert resumed["status"] == "completed" and resumed["global_step"] == reference["global_step"] == 6

    # Every logger holds each step once, with the uninterrupted run's values: before the resumed
    # step the interrupted run's, from it on the resumed run's, which continues each process's
    # shard of the epoch where it stopped (data/sampler.py), so it trains exactly as the
    # uninterrupted run did; the resumed epoch's training averages include the batches before the
    # resume (models/epoch_averages.py). No (step, metric) is logged twice.
    rows, expected_rows = csv_rows(run_dir), csv_rows(reference_dir)
    assert [(step, sorted(values)) for step, values in rows] == [(step, sorted(values)) for step, values in expected_rows]
    assert max(keys_per_step(rows).values()) == 1
    assert rows == expected_rows
    in_csv = {(step, key): float(value) for step, values in rows for key, value in values.items()}

    scalars, expected_scalars = tensorboard_scalars(run_dir), tensorboard_scalars(reference_dir)
    assert scalars.keys() == expected_scalars.keys() and "train/loss_step" in scalars
    for tag, events in scalars.items():
        assert [step for step, _ in events] == [step for step, _ in expected_scalars[tag]], tag  # once each, in order
        assert events == expected_scalars[tag], tag
        assert all(value == torch.tensor(in_csv[step, tag]).item() for step, value in events), tag  # float32 of CSV's
    event_pids = {int(f.name.split(".")[-2]) for f in (run_dir / "tensorboard").glob("events.out.tfevents.*")}
    assert event_pids <= {killed_pid, resumed_pid}  # written by rank 0 alone

    # W&B: one run, continued. It cannot drop what the killed part sent after last.ckpt, so it
    # keeps those values and sends the rest: the LR of step 5 came before the kill, the loss of
    # step 5 (and the epoch's validation) after the resume. Rank 1 sent nothing.
    sent, expected_sent = sent_to_wandb(run_dir), sent_to_wandb(reference_dir)
    assert {rank for rank, _, _ in sent + expected_sent} == {0}
    sent, expected_sent = [row[1:] for row in sent], [row[1:] for row in expected_sent]
    assert keys_per_step(sent) == keys_per_step(expected_sent) and max(keys_per_step(sent).values()) == 1
    assert sent[:len(killed_sent)] == killed_sent and all(row in expected_sent for row in killed_sent)  # uninterrupted values
    assert any(step == RESUMED_STEP + 1 for step, _ in killed_sent)  # ... some of step 5 among them
    resumed_part = sent[len(killed_sent):]
    assert all(value == in_csv[step, key] for step, values in resumed_part for key, value in values.items())
    # The W&B files: the killed part's run (whose records W&B's service may not have saved
    # before it died with its process), continued by the resumed part's with the same id, which
    # holds what that part sent.
    killed_file, resumed_file = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert killed_file.name == resumed_file.name and killed_file.parent != resumed_file.parent
    assert [wandb_row(row) for row in read_offline_run(resumed_file).history] == resumed_part
