"""Loggers: W&B that falls back to offline mode (and says so) without an API key; a CSV logger
whose metrics.csv survives a resume.

A resumed run (``resume=auto``, ``ckpt_path``) replays the steps between its checkpoint and the
interruption; :func:`continue_logs` makes every logger record each step once: CSV keeps the rows
before the resumed step, TensorBoard purges the events from it on (``purge_step``), and W&B
continues the same run (its id, the last step logged and the keys logged at it are kept in
``<run dir>/wandb_run_id``) and skips what it already logged.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from tlresearch.core.files import write_json_atomic
from tlresearch.results.wandb_report import cell_group, hydra_context, run_tags

log = logging.getLogger(__name__)


def wandb_api_key_configured() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY, or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class ReportingWandbLogger(WandbLogger):
    """A ``WandbLogger`` that carries the settings of the end-of-run report
    (:func:`tlresearch.results.wandb_report.report_and_finish`).

    Args:
        prediction_rows: test predictions logged as a table with their images (0: none).
        prediction_image_size: longest side, in pixels, of the images in that table.
        **kwargs: ``WandbLogger`` / ``wandb.init`` arguments.
    """

    #: The file of the run directory that keeps the W&B run's id and the last step logged to it.
    RUN_FILE = "wandb_run_id"

    def __init__(self, *, prediction_rows: int = 100, prediction_image_size: int = 96, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prediction_rows = int(prediction_rows)
        self.prediction_image_size = int(prediction_image_size)
        self._run_file = Path(self.save_dir or ".") / self.RUN_FILE
        # Lightning logs several dicts at one step (the LR at the batch's start, the loss at its end,
        # validation and epoch averages at an epoch's end), and a run killed in between has logged
        # some of them: RUN_FILE keeps the last step logged *and the keys logged at it*. A resume
        # skips the steps before that one, and at it the dicts whose keys were all logged.
        self._resumed_step, self._resumed_keys = -1, frozenset()
        self._step, self._keys = -1, set()  # the step last logged and its keys (what RUN_FILE holds)

    def continue_run(self) -> None:
        """Continue the W&B run of this run directory (its id in ``wandb_run_id``): called on a
        resume, before the run starts. Steps it already logged are not logged again."""
        if self._experiment is not None:
            raise RuntimeError("ReportingWandbLogger.continue_run() must be called before the W&B run starts.")
        try:
            saved = json.loads(self._run_file.read_text())
            run_id = str(saved["id"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # no W&B run yet (killed before its first log), or an unreadable file: a new one
        self._id = self._wandb_init["id"] = run_id
        self._wandb_init["resume"] = "allow"
        self._step, self._keys = int(saved.get("step", -1)), set(saved.get("keys", ()))
        self._resumed_step, self._resumed_keys = self._step, frozenset(self._keys)

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        if step is not None and self._logged_before_resume(step, metrics):
            return  # replayed after a resume: W&B has these values from the interrupted run
        super().log_metrics(metrics, step)
        if step is None or step < self._step:
            return
        if step > self._step:
            self._step, self._keys = step, set()
        if not self._keys.issuperset(metrics):  # one write per dict that adds keys (a few per step)
            self._keys.update(metrics)
            self._remember()

    def _logged_before_resume(self, step: int, metrics: Any) -> bool:
        """True for a dict the interrupted run logged: any at a step before its last, and at its
        last one a dict whose keys it all logged there."""
        return step < self._resumed_step or (step == self._resumed_step and self._resumed_keys.issuperset(metrics))

    @rank_zero_only
    def _remember(self) -> None:
        write_json_atomic(self._run_file, {"id": self.experiment.id, "step": self._step, "keys": sorted(self._keys)})


def wandb_logger(
    save_dir: str,
    project: str = "tlresearch",
    offline: bool | None = None,
    group: str | None = None,
    group_by_overrides: bool = True,
    tags: list[str] | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A Lightning ``WandbLogger``; offline (with a message saying how to upload later) when
    ``offline`` is true, WANDB_MODE=offline, or no API key is configured.

    With ``group_by_overrides`` the group is ``group`` plus the job's overrides other than the
    seed (:func:`~tlresearch.results.wandb_report.cell_group`), so the seeds of one table cell
    share a W&B group; the tags get the experiment and the sweep added
    (:func:`~tlresearch.results.wandb_report.run_tags`). Other arguments go to
    :class:`ReportingWandbLogger`.
    """
    context = hydra_context()
    if group is not None and group_by_overrides:
        group = cell_group(group, context.get("overrides", []))
    tags = run_tags(tags or [], context)
    if offline is None:
        offline = os.environ.get("WANDB_MODE") in {"offline", "dryrun"} or not wandb_api_key_configured()
    if offline:
        log.warning(
            "W&B: %s; logging offline to %s/wandb. Upload later with `wandb sync %s/wandb/offline-run-*`.",
            "offline mode requested" if os.environ.get("WANDB_MODE") else "no API key found (set WANDB_API_KEY or run `wandb login`)",
            save_dir,
            save_dir,
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return ReportingWandbLogger(save_dir=save_dir, project=project, offline=offline, group=group, tags=tags, **kwargs)


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, whose ``metrics.csv`` survives a resume.

    Lightning's writer deletes the ``metrics.csv`` it finds when it starts, so the curves of a
    resumed run would begin at the resume. After :meth:`continue_from` (which ``train`` calls
    with the resumed checkpoint's step, before anything is logged) the rows logged before that
    step are kept, the ones after it dropped (the resumed run logs those steps again), and the
    run appends after them. Arguments are ``CSVLogger``'s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept_rows: list[dict[str, str]] = []

    def continue_from(self, step: int) -> None:
        """Keep the rows of the existing ``metrics.csv`` whose step is below ``step``."""
        if self._experiment is not None:
            raise RuntimeError("ResumableCSVLogger.continue_from() must be called before anything is logged.")
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if path.is_file():
            with open(path, newline="") as fh:
                self._kept_rows = [row for row in csv.DictReader(fh) if _logged_before(row, step)]

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        writer = super().experiment  # deletes the old metrics.csv
        if self._kept_rows:  # written back by Lightning's own writer (its header: the sorted columns)
            writer.metrics, self._kept_rows = self._kept_rows, []
            writer.save()
        return writer


def _logged_before(row: dict[str, str], step: int) -> bool:
    try:
        return float(row.get("step") or "nan") < step
    except ValueError:
        return False


def continue_logs(loggers: Iterable[Logger], step: int) -> None:
    """Tell the loggers that the run resumes at ``step`` (before anything is logged), so that the
    steps it replays are recorded once: CSV keeps its rows before ``step``, TensorBoard purges its
    events from ``step`` on, W&B continues its run and skips the steps it has."""
    for lg in loggers:
        if isinstance(lg, ResumableCSVLogger):
            lg.continue_from(step)
        elif isinstance(lg, TensorBoardLogger):
            lg._kwargs["purge_step"] = step  # passed to its SummaryWriter, created at the first log
        elif isinstance(lg, ReportingWandbLogger):
            lg.continue_run()
