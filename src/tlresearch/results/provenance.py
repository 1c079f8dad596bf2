"""provenance.json: what produced a run, so a number in a table can be traced and re-made."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tlresearch.core.files import write_json_atomic

PACKAGES = ("tlresearch", "torch", "torchvision", "pytorch-lightning", "hydra-core", "torchmetrics", "timm", "wandb", "pillow")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a result."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirtiness of the source tree tlresearch runs from (None outside a git checkout).

    ``dirty``: tracked files differ from the commit; ``untracked``: source or config files (under
    ``src/`` and ``conf/``) that git does not track, which a run may use all the same.
    Only a checkout of tlresearch itself counts: an installed copy that happens to sit inside
    some other repository (a virtual environment in a project folder) gets no commit.
    """
    where = path or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    toplevel = git("rev-parse", "--show-toplevel")
    if commit is None or toplevel is None or not (Path(toplevel) / "src" / "tlresearch").is_dir():
        return {"commit": None, "dirty": None, "untracked": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    untracked = git("-C", toplevel, "ls-files", "--others", "--exclude-standard", "--", "src", "conf") or ""
    return {"commit": commit, "dirty": bool(status), "untracked": untracked.splitlines()[:100]}


def device_info() -> dict[str, Any]:
    """The machine and accelerator a run used."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
    return info


def provenance_record(
    dataset: dict[str, Any] | None = None, extra: dict[str, Any] | None = None, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The full provenance record of a run: ``config`` is the resolved config (interpolations
    replaced by their values, unlike Hydra's ``.hydra/config.yaml``)."""
    return {
        "created": datetime.now(timezone.utc).isoformat(),
        "command": sys.argv,
        "config": config,
        "packages": package_versions(),
        "git": git_state(),
        "device": device_info(),
        "dataset": dataset,
        **(extra or {}),
    }


def write_provenance(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``out_dir/provenance.json`` atomically.

    A run that is resumed in the same directory keeps the record of its earlier part(s) under
    ``"previous"``: a number can be traced through every command and commit that produced it.
    """
    path = Path(out_dir) / "provenance.json"
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict):
        record = {**record, "previous": earlier}
    return write_json_atomic(path, record)
