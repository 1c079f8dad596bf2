"""Scanning a tree of images into a manifest: every file checked once, the verdicts cached.

:func:`scan_images` lists every file under a folder (:func:`list_files`), checks each one
(:func:`~tlresearch.data.images.check_image`, in threads) and returns a :class:`Manifest` of
the files kept (with their class) and dropped (with a reason). The manifest is written
atomically and keyed by the files' names, sizes and mtimes, so a later scan of unchanged files
reads it back instead of decoding every image again. :func:`default_cache_dir` says where
manifests go when no cache folder is configured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tlresearch.core.files import write_json_atomic

from .images import IMAGE_EXTENSIONS, check_image, reason_category

log = logging.getLogger(__name__)

#: Bump when the scanner's verdicts change, so stale manifests are not reused.
MANIFEST_FORMAT = 1
#: How many dropped files are logged one by one before the rest are only counted.
_MAX_LOGGED_DROPS = 20


@dataclass
class Manifest:
    """What a scan kept and dropped. Paths are '/'-separated, relative to ``scan_root``."""

    scan_root: str
    image_filter: str
    key: str
    kept: list[tuple[str, str]]  # (relative path, class name)
    dropped: list[tuple[str, str]]  # (relative path, reason)
    path: str | None = None  # where it was written, if anywhere

    def to_json(self) -> dict[str, Any]:
        by_reason = Counter(reason_category(reason) for _, reason in self.dropped)
        return {
            "format": MANIFEST_FORMAT,
            "scan_root": self.scan_root,
            "filter": self.image_filter,
            "key": self.key,
            "num_kept": len(self.kept),
            "num_dropped": len(self.dropped),
            "dropped_by_reason": dict(sorted(by_reason.items())),
            "kept": [{"path": rel, "class": name} for rel, name in self.kept],
            "dropped": [{"path": rel, "reason": reason} for rel, reason in self.dropped],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | None = None) -> Manifest:
        return cls(
            scan_root=data["scan_root"],
            image_filter=data["filter"],
            key=data["key"],
            kept=[(entry["path"], entry["class"]) for entry in data["kept"]],
            dropped=[(entry["path"], entry["reason"]) for entry in data["dropped"]],
            path=path,
        )


@dataclass(frozen=True)
class _FileEntry:
    rel: str
    size: int
    mtime_ns: int


def list_files(root: Path) -> tuple[list[_FileEntry], list[str]]:
    """Every file under ``root`` (sorted, with size and mtime) and every directory named like an image.

    Hidden directories (``.git``, our own ``.tlresearch`` cache) are skipped; symlinked
    directories are followed once (a loop is not walked twice).
    """
    files: list[_FileEntry] = []
    image_named_dirs: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop: already walked
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        image_named_dirs += [str(rel_dir / d) for d in dirnames if Path(d).suffix.lower() in IMAGE_EXTENSIONS]
        for name in sorted(filenames):
            rel = str(rel_dir / name)
            try:
                fst = os.stat(os.path.join(dirpath, name))
                files.append(_FileEntry(rel, fst.st_size, fst.st_mtime_ns))
            except OSError:  # a dangling symlink: still listed, so it is reported as undecodable
                files.append(_FileEntry(rel, -1, 0))
    return files, image_named_dirs


def _scan_key(files: Sequence[_FileEntry], image_dirs: Sequence[str], image_filter: str, extra: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([MANIFEST_FORMAT, image_filter, extra, list(image_dirs)], sort_keys=True).encode())
    for entry in files:
        digest.update(f"\n{entry.rel}\t{entry.size}\t{entry.mtime_ns}".encode())
    return digest.hexdigest()


def _load_manifest(path: Path, key: str) -> Manifest | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != MANIFEST_FORMAT or data.get("key") != key:
        return None
    try:
        return Manifest.from_json(data, path=str(path))
    except (KeyError, TypeError):
        return None


def scan_images(
    root: str | os.PathLike,
    *,
    label_of: Callable[[PurePosixPath], str | None],
    image_filter: str = "decodes",
    manifest_path: str | os.PathLike | None = None,
    key_extra: Any = None,
    progress_every: int = 1000,
    workers: int = 1,
) -> Manifest:
    """Check every file under ``root`` once; write and return the manifest of kept and dropped files.

    ``label_of(relative_path)`` gives a file's class name, or ``None`` for a file outside any
    class folder (dropped as "not in a class folder"). The manifest is cached at
    ``manifest_path``, keyed by the list of files with their sizes and mtimes, ``image_filter``
    and ``key_extra`` (e.g. the class list): while nothing changed, a later call reads it back
    instead of decoding every image again. ``workers`` threads decode in parallel (PIL releases
    the GIL while decoding); the verdicts and their order do not depend on it.
    """
    root = Path(root)
    files, image_dirs = list_files(root)
    key = _scan_key(files, image_dirs, image_filter, key_extra)
    if manifest_path is not None:
        cached = _load_manifest(Path(manifest_path), key)
        if cached is not None:
            cached.scan_root = str(root)  # the dataset may have moved since (with its .tlresearch folder)
            log.info("Using cached scan of %s (%d kept, %d dropped): %s", root, len(cached.kept), len(cached.dropped), manifest_path)
            _warn_dropped(cached, logged_individually=False)
            return cached

    log.info("Scanning %d files under %s (filter=%s, %d thread(s))...", len(files), root, image_filter, workers)
    kept: list[tuple[str, str]] = []
    dropped: list[tuple[str, str]] = [(rel, "not an image: a directory") for rel in image_dirs]
    started = time.monotonic()

    def verdict(entry: _FileEntry) -> tuple[str | None, str]:
        return _verdict(root, entry.rel, label_of, image_filter)

    with ThreadPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        for done, (entry, (reason, name)) in enumerate(zip(files, pool.map(verdict, files)), start=1):
            if reason is None:
                kept.append((entry.rel, name))
            else:
                dropped.append((entry.rel, reason))
            if done % progress_every == 0 and done < len(files):
                rate = done / max(time.monotonic() - started, 1e-9)
                log.info("  scanned %d/%d files (%.0f files/s, ~%.0f s left)", done, len(files), rate, (len(files) - done) / rate)

    manifest = Manifest(str(root), image_filter, key, kept, dropped)
    if manifest_path is not None:
        try:
            write_json_atomic(manifest_path, manifest.to_json())
            manifest.path = str(manifest_path)
        except OSError as error:  # a read-only dataset still loads; it is just scanned again next time
            log.warning("Could not write the manifest %s (%s); the next setup will scan again.", manifest_path, error)
    log.info("Scanned %s in %.1f s: %d kept, %d dropped.", root, time.monotonic() - started, len(kept), len(dropped))
    _warn_dropped(manifest, logged_individually=True)
    return manifest


class _Inline:
    """A stand-in for an executor that maps in the calling thread (no pool for one worker)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def map(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterable[Any]:
        return map(fn, items)


def _verdict(root: Path, rel: str, label_of: Callable[[PurePosixPath], str | None], image_filter: str) -> tuple[str | None, str]:
    if PurePosixPath(rel).suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image", ""
    name = label_of(PurePosixPath(rel))
    if name is None:
        return "not in a class folder", ""
    return check_image(root / rel, image_filter), name


def _warn_dropped(manifest: Manifest, *, logged_individually: bool) -> None:
    if not manifest.dropped:
        return
    if logged_individually:
        for rel, reason in manifest.dropped[:_MAX_LOGGED_DROPS]:
            log.warning("Skipping %s: %s", Path(manifest.scan_root) / rel, reason)
    by_reason = Counter(reason_category(reason) for _, reason in manifest.dropped)
    summary = ", ".join(f"{count} {why}" for why, count in sorted(by_reason.items()))
    where = f"; every file is listed in {manifest.path}" if manifest.path else ""
    log.warning("Skipped %d files under %s (%s)%s", len(manifest.dropped), manifest.scan_root, summary, where)


def default_cache_dir(root: Path) -> Path:
    """``root/.tlresearch`` when writable, else a per-root folder in the user's cache."""
    local = root / ".tlresearch"
    try:
        local.mkdir(parents=True, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    base = os.environ.get("TLRESEARCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlresearch"
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(base) / "datasets" / tag
