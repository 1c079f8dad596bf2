"""Checkpoint files: written atomically, read safely.

Lightning 2.6 saves through fsspec: on a local disk the checkpoint is written to a temporary
file in the *system* temp folder and then ``shutil.move``-d over the target. When that folder is
on another file system than the run directory (a tmpfs ``/tmp``, a network home), the move is a
copy straight into ``last.ckpt``: a crash or a full disk mid-copy leaves a truncated
``last.ckpt``, and nothing is fsync-ed. :class:`AtomicCheckpointIO` writes the temporary file
beside the target, fsyncs it and renames it (:func:`tlresearch.utils.io.atomic_write`), so
``last.ckpt`` is always the previous complete checkpoint or the new complete one.

Reading: Lightning's ``trainer.fit(ckpt_path=...)`` passes ``weights_only=None`` to
``torch.load`` (whose default is ``True`` from torch 2.6 on); :class:`AtomicCheckpointIO` makes
it explicit, so a checkpoint never runs pickled code whatever the torch version.
:func:`read_checkpoint` is the one reader of our own code, with the error messages users see.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from tlresearch.errors import ConfigError
from tlresearch.utils.io import OutputWriteError, atomic_write


class CheckpointWriteError(OutputWriteError):
    """A checkpoint could not be written (disk full, read-only or missing folder)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with atomic local writes and ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's transaction is the atomic write there
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options.")
        try:
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        except OSError as exc:
            cause = exc.__cause__ if isinstance(exc, OutputWriteError) and exc.__cause__ is not None else exc
            raise CheckpointWriteError(
                f"Could not write the checkpoint {path} ({getattr(cause, 'strerror', None) or cause}). The previous "
                "checkpoint under that name, if any, is intact. Free disk space or make the run directory writable "
                "(or point hydra.run.dir at another disk), then continue with resume=auto."
            ) from cause

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)


def read_checkpoint(path: str | os.PathLike, key: str = "ckpt_path", *, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; any failure becomes a ConfigError naming ``key``.

    ``mmap=True`` maps the tensors instead of reading them, for a cheap look at the metadata.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}={str(path)!r} does not exist; pass a checkpoint written by tlresearch.train.")
    if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; its directory is written last
        raise ConfigError(
            f"{key}={str(path)!r} could not be read as a PyTorch checkpoint: it is not a complete zip archive, as "
            f"torch.save writes them: it was cut short (a crash, a full disk or a partial copy). {_USE_ANOTHER}"
        )
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_global(exc)
        if unsafe is None:
            raise _unreadable(key, path, exc) from exc
        raise ConfigError(
            f"{key}={str(path)!r} is refused: it holds objects other than tensors and plain data, whose loading "
            f"could run code ({unsafe}). Use a checkpoint written by tlresearch.train (or one from a source you trust, "
            "converted to a plain state_dict)."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise _unreadable(key, path, exc) from exc
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{key}={str(path)!r} is not a Lightning checkpoint (it holds a {type(ckpt).__name__}).")
    return ckpt


def _unsafe_global(exc: BaseException) -> str | None:
    """The line of a weights-only load failure that names a refused global (code), if it is one."""
    return next((line.strip() for line in str(exc).splitlines() if "global" in line.lower() and "unsupported" in line.lower()), None)


_USE_ANOTHER = "Pass a complete checkpoint (e.g. another file of that run's checkpoints/ folder)."

#: Boilerplate lines of torch's weights-only errors, left out of our one-line reason.
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unreadable(key: str, path: str | os.PathLike, exc: BaseException) -> ConfigError:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(_TORCH_BOILERPLATE)), lines[0] if lines else "")
    return ConfigError(
        f"{key}={str(path)!r} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {reason[:200]}). "
        f"Is the file complete (not truncated by a crash or a partial copy)? {_USE_ANOTHER}"
    )
