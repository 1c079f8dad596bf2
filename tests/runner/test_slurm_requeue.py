"""SLURM's warning under submitit (runner/slurm_requeue.py): it stops a running trainer as SIGTERM
does, then goes to submitit's handler (requeue); outside a trainer it goes there at once. The
end-to-end run (launcher, submitit's job runner, fake sbatch/scontrol) is in tests/test_resume.py."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission
from submitit.slurm.slurm import SlurmJobEnvironment

from tlresearch.runner.entry import SIGTERM_EXIT_CODE, run_task
from tlresearch.runner.slurm_requeue import PreemptionNotice
from tlresearch.train import resume_checkpoint


class SubmititHandler:
    """Stands in for submitit's SIGUSR2 handler: records each call, then exits as submitit does
    after ``scontrol requeue`` (``sys.exit(-1)``; the real one is run by tests/test_resume.py)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, signum, frame) -> None:
        self.calls.append(signal.Signals(signum).name)
        sys.exit(-1)


@pytest.fixture
def submitit_handler(monkeypatch, tmp_path):
    """submitit's handler on SIGUSR2, as its job runner installs it; the signals are restored after."""
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "submitit"))  # set by submitit's job runner
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    handler = SubmititHandler()
    signal.signal(signal.SIGUSR2, handler)
    yield handler
    for signum, old in previous.items():
        signal.signal(signum, old)


def test_outside_a_trainer_the_warning_goes_to_submitit_at_once(submitit_handler):
    notice = PreemptionNotice().install()
    with pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGUSR2)  # Python runs the handler right after the call returns
    assert submitit_handler.calls == ["SIGUSR2"] and not notice.pending
    notice.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is submitit_handler


def test_outside_a_submitit_job_the_signal_is_left_alone(submitit_handler, monkeypatch):
    monkeypatch.delenv("SUBMITIT_FOLDER")  # someone else's handler on SIGUSR2 (a profiler, ...)
    notice = PreemptionNotice().install()
    assert signal.getsignal(signal.SIGUSR2) is submitit_handler and notice.scheduler_handler is None
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    monkeypatch.setenv("SUBMITIT_FOLDER", "x")
    PreemptionNotice().install().uninstall()  # no handler to put in front of
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def run_stopped_trainer(tmp_path, events: list[str]) -> SystemExit:
    """run_task of a task that behaves as a trainer receiving SLURM's warning mid-step; its exit."""

    def task(cfg):
        # While a trainer runs, Lightning's SIGTERM handler is installed; it marks the run as stopping.
        signal.signal(signal.SIGTERM, lambda signum, frame: events.append(signal.Signals(signum).name))
        os.kill(os.getpid(), signal.SIGUSR2)
        events.append("last.ckpt")  # the step in progress finishes and writes last.ckpt
        raise SIGTERMException  # Lightning's stop after that step

    with pytest.raises(SystemExit) as stopped:
        run_task(task, OmegaConf.create({"paths": {"output_dir": str(tmp_path)}}))
    return stopped.value


def test_a_running_trainer_writes_its_checkpoint_before_submitit_requeues(submitit_handler, tmp_path):
    events: list[str] = []
    submitit_handler.calls = events
    stopped = run_stopped_trainer(tmp_path, events)
    assert events == ["SIGTERM", "last.ckpt", "SIGUSR2"]  # submitit's handler last
    assert stopped.code == -1  # submitit's exit after scontrol requeue
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "requeue" in record["error"]
    assert signal.getsignal(signal.SIGUSR2) is submitit_handler


def test_when_submitit_refuses_to_requeue_the_job_stops_as_on_sigterm(submitit_handler, tmp_path, monkeypatch):
    """submitit's own handler, at the time limit with no requeue left (max_num_timeout=0)."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    delayed = DelayedSubmission(print)
    delayed.set_timeout(1, 0)  # a 1-minute limit (reached at once), no time-out requeue allowed
    signal.signal(signal.SIGUSR2, SignalHandler(SlurmJobEnvironment(), None, delayed).checkpoint_and_try_requeue)
    events: list[str] = []
    stopped = run_stopped_trainer(tmp_path, events)
    assert events == ["SIGTERM", "last.ckpt"] and stopped.code == SIGTERM_EXIT_CODE
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    assert "not requeued (Job not requeued because: timed-out too many times.)" in record["error"]
    assert "resume=auto" in record["error"]


def test_a_job_requeued_by_slurm_continues_its_last_checkpoint(tmp_path, monkeypatch):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    cfg = OmegaConf.create({"resume": None, "ckpt_path": None})
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert resume_checkpoint(cfg, tmp_path) is None  # a first start, even inside SLURM
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_checkpoint(cfg, tmp_path) == str(last)
    assert resume_checkpoint(cfg, tmp_path / "elsewhere") is None  # nothing written yet: a fresh run
