"""Logger factories: W&B that falls back to offline mode (and says so) without an API key."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger

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

    def __init__(self, *, prediction_rows: int = 100, prediction_image_size: int = 96, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prediction_rows = int(prediction_rows)
        self.prediction_image_size = int(prediction_image_size)


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
    from tlresearch.results.wandb_report import cell_group, hydra_context, run_tags

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
