"""SLURM's warning before the time limit, under submitit: write ``last.ckpt`` first, then requeue.

With ``hydra/launcher=slurm`` each job runs inside submitit's job runner
(``python -m submitit.core._submit``). submitit asks SLURM for a warning signal ``signal_delay_s``
before the time limit (and at pre-emption): ``SIGUSR2``, or ``SUBMITIT_PREEMPT_SIGNAL``. Its
handler pickles the job again (the launcher's ``checkpoint``), runs ``scontrol requeue <job id>``
and exits at once, wherever training was: everything since the last ``last.ckpt`` is lost.

:class:`PreemptionNotice` composes the two handlers. While a Lightning trainer runs, the warning
first stops the trainer exactly as SIGTERM does (the step in progress finishes, ``LastCheckpoint``
writes ``last.ckpt``, Lightning raises ``SIGTERMException``, see ``checkpoints/resume.py``);
:func:`~tlresearch.runner.entry.run_task` then calls :meth:`PreemptionNotice.hand_over`, which runs
submitit's own handler: re-pickle, ``scontrol requeue``, exit. Outside a trainer (data preparation,
feature extraction) submitit's handler runs at once, as before. SLURM starts the requeued job
with the same submission and ``SLURM_RESTART_COUNT`` >= 1 (:func:`requeued_by_slurm`): ``train``
then continues from the run directory's ``last.ckpt`` as with ``resume=auto``.

Why not Lightning's own SLURM auto-requeue: it listens to ``SIGUSR1`` only when nothing else
handles it (submitit's job runner handles its own signal first), writes its ``hpc_ckpt`` from
inside the signal handler (mid-step, not at a step boundary) and does not stop the run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

try:  # submitit comes with the `launchers` extra; without it no job runs under submitit
    from submitit import JobEnvironment
except ImportError:  # pragma: no cover - depends on the installation
    JobEnvironment = None

log = logging.getLogger(__name__)


class PreemptionNotice:
    """While installed, the scheduler's warning signal stops a running trainer as SIGTERM would
    and is handed to submitit's handler afterwards (:meth:`hand_over`).

    Installed only inside submitit's job runner (which sets ``SUBMITIT_FOLDER``) where a handler
    for its signal is set; elsewhere the signal is left alone.
    """

    def __init__(self) -> None:
        usr_sig = JobEnvironment.USR_SIG if JobEnvironment is not None else "USR2"
        self.signum = signal.Signals[f"SIG{usr_sig}"]  # submitit's: USR2 unless SUBMITIT_PREEMPT_SIGNAL
        self.scheduler_handler: Callable[[int, FrameType | None], Any] | None = None
        self.pending = False
        self._idle_sigterm: Any = None

    def install(self) -> PreemptionNotice:
        """Put :meth:`_notice` in front of submitit's handler (no-op outside a submitit job or the main thread)."""
        if threading.current_thread() is not threading.main_thread() or "SUBMITIT_FOLDER" not in os.environ:
            return self
        handler = signal.getsignal(self.signum)
        if callable(handler) and handler != self._notice:
            self.scheduler_handler = handler
            # The SIGTERM handler outside a trainer; Lightning installs its own while one runs.
            self._idle_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(self.signum, self._notice)
        return self

    def uninstall(self) -> None:
        """Give the signal back to submitit's handler."""
        if self.scheduler_handler is not None and signal.getsignal(self.signum) == self._notice:
            signal.signal(self.signum, self.scheduler_handler)

    def _notice(self, signum: int, frame: FrameType | None) -> None:
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop) or stop == self._idle_sigterm:  # no trainer to stop: submitit's handler now
            assert self.scheduler_handler is not None
            self.scheduler_handler(signum, frame)
            return
        log.warning("%s (the scheduler's warning): stopping after this step to write last.ckpt, then requeueing",
                    signal.Signals(signum).name)
        self.pending = True
        stop(signal.SIGTERM, frame)  # Lightning's handler: the step finishes, last.ckpt, SIGTERMException

    def describe(self) -> str:
        """The ``error`` that ``metrics.json`` records for a run stopped by the warning."""
        return (f"interrupted by the scheduler's warning ({self.signum.name}): last.ckpt written, the job handed to "
                "submitit to requeue; the requeued job continues with resume=auto")

    def hand_over(self) -> str | None:
        """After the trainer stopped on the warning: run submitit's handler (re-pickle the job,
        ``scontrol requeue``, exit with ``SystemExit``). Returns why the job was not requeued
        (submitit refuses after ``max_num_timeout`` time-outs), or None (nothing pending, or a
        rank other than 0, which submitit leaves running)."""
        if not self.pending or self.scheduler_handler is None:
            return None
        self.pending = False
        try:
            self.scheduler_handler(self.signum, None)
        except Exception as exc:  # noqa: BLE001 - submitit's UncompletedJobError: "Job not requeued because: ..."
            log.warning("not requeued: %s", exc)
            return str(exc)
        return None


def requeued_by_slurm() -> int:
    """How many times SLURM has requeued (restarted) this job: ``SLURM_RESTART_COUNT``, 0 outside SLURM."""
    count = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(count) if count.isdigit() else 0
