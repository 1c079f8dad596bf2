"""Atomic file writes: a crash never leaves a half-written file that a reader takes as real."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlresearch.core.errors import ConfigError


class OutputWriteError(ConfigError, OSError):
    """A file could not be written (disk full, read-only or missing folder, no permission).

    An ``OSError`` (callers that tolerate a failed write, e.g. of a cache, still catch it) and a
    :class:`ConfigError` (entry points report it as one paragraph with a non-zero exit code: the
    cause is the machine's, not our code's).
    """


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX file systems, so readers see the old file or the new
    one, never a partial one. The temporary file is removed if ``write`` fails. An OSError
    (disk full, read-only folder) becomes an :class:`OutputWriteError` that says so.
    """
    path = Path(path)
    try:
        return _write_and_rename(path, write)
    except OutputWriteError:
        raise
    except OSError as exc:
        raise OutputWriteError(
            f"Could not write {path} ({exc.strerror or exc}); any previous version of it is intact. Free disk space "
            f"or make {path.parent} writable (or point hydra.run.dir / paths.cache_dir at another disk)."
        ) from exc


def _write_and_rename(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # torch / numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
