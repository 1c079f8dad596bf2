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


def wandb_logger(
    save_dir: str,
    project: str = "tlresearch",
    offline: bool | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A Lightning ``WandbLogger``; offline (with a message saying how to upload later) when
    ``offline`` is true, WANDB_MODE=offline, or no API key is configured."""
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
    return WandbLogger(save_dir=save_dir, project=project, offline=offline, **kwargs)
