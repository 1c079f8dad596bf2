"""Archives and downloads: safe zip extraction, and downloads that fail with a clear message.

* :func:`safe_extract_zip`: refuses members that would escape the target folder (zip slip),
  and commits the extraction so that an interrupted one is never taken for a complete dataset;
* :func:`download_file`: a download through torchvision to a ``.part`` file, renamed when whole;
* :func:`network_error`: the ConfigError that says the network is the likely cause.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError

from tlresearch.core.errors import ConfigError

from .images import error_text

log = logging.getLogger(__name__)


def _unsafe_member_reason(info: zipfile.ZipInfo, dest: Path) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a '..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    target = (dest / name).resolve()
    if not target.is_relative_to(dest.resolve()):
        return "a path outside the target folder"
    return None


def safe_extract_zip(archive: Path, dest: Path, *, key: str = "data.root", commit_last: str | None = None) -> None:
    """Extract ``archive`` into ``dest``, refusing members that could escape it (zip slip).

    Every member is checked before anything is written. Extraction goes to a hidden temporary
    folder first and its top-level entries are then renamed into ``dest``, ``commit_last``
    last: that folder appearing means the extraction completed, so an interrupted run is never
    taken for a complete dataset.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                why = _unsafe_member_reason(info, dest)
                if why is not None:
                    raise ConfigError(
                        f"{key}: refusing to extract {archive}: member {info.filename!r} is {why} and would be written "
                        f"outside {dest}. This is not the official archive; delete it and download it again."
                    )
            tmp = dest / f".extract-{archive.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("Extracting %s into %s...", archive, dest)
            zf.extractall(tmp)
    except zipfile.BadZipFile as error:
        raise ConfigError(
            f"{key}: {archive} is not a valid zip archive ({error}); it is probably a partial download. Delete it and run again."
        ) from error
    entries = sorted(tmp.iterdir(), key=lambda p: p.name == commit_last)
    for entry in entries:
        target = dest / entry.name
        if target.exists():
            log.info("Keeping the existing %s (not overwritten by the archive's copy).", target)
            continue
        os.replace(entry, target)
    shutil.rmtree(tmp, ignore_errors=True)


def network_error(what: str, urls: Sequence[str], dest: Path, error: BaseException) -> ConfigError:
    """The ConfigError for a download that failed: says plainly that the network is the likely cause."""
    return ConfigError(
        f"data.download=true: could not download {what} from {', '.join(urls)} ({error_text(error)}). "
        f"This machine seems to have no network access (or the server is unreachable). Download it on a machine with "
        f"network access, put it under {dest}, and set data.download=false (or point data.root at the copy)."
    )


def download_file(url: str, dest_dir: Path, filename: str, *, what: str, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest_dir/filename`` through torchvision; a network failure becomes a ConfigError.

    The download goes to ``filename + ".part"`` first, so an interrupted download is never
    mistaken for a complete file.
    """
    from torchvision.datasets import utils as tv_utils  # looked up at call time: tests patch it

    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f"{filename}.part"
    part.unlink(missing_ok=True)
    try:
        tv_utils.download_url(url, str(dest_dir), filename=part.name, md5=md5)
    except (URLError, OSError) as error:
        part.unlink(missing_ok=True)
        raise network_error(what, [url], dest_dir / filename, error) from error
    except RuntimeError as error:  # torchvision's "File not found or corrupted" (checksum mismatch)
        part.unlink(missing_ok=True)
        raise ConfigError(
            f"data.download=true: downloading {what} from {url} failed ({error_text(error)}). "
            f"Run again, or download it by hand into {dest_dir / filename}."
        ) from error
    final = dest_dir / filename
    os.replace(part, final)
    return final
