"""The feature cache on disk: one entry per key, a lock per key, checksums and a size limit.

An entry is ``<key>.pt`` (the tensors) and ``<key>.json`` (what they are: backbone, dataset,
split, shape, the ``.pt`` file's sha256, when it was made and last used). Both are written
atomically (temporary file + rename, ``core/files.py``), so a reader never sees half a file.

* **One extraction per key.** Every use of an entry (check, read, extract, write, delete)
  holds the key's lock, ``locks/<key>.lock`` (an OS file lock from ``filelock``: released
  when its process ends, even on a crash). Processes that need the same features at once (a
  joblib or submitit sweep, two sweeps on one node, DDP jobs) wait while the first extracts,
  then read its file. Waiting longer than ``paths.cache_lock_timeout_h`` is an error naming
  the lock file.
* **Checksums.** The sha256 of ``<key>.pt`` is stored in ``<key>.json`` at write time and
  checked at every read: a truncated, overwritten or half-copied file is reported and
  extracted again, never trained on.
* **Size limit.** After each write the least recently used entries are deleted until the
  cache holds at most ``paths.cache_max_gb``; an entry whose lock is held (in use) is kept.

``python -m tlresearch.cache`` (``protocols/cache_admin.py``) lists and clears entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from tlresearch.core.config import check_positive
from tlresearch.core.errors import ConfigError
from tlresearch.core.files import atomic_write, write_json_atomic

log = logging.getLogger(__name__)

#: Bump when the stored layout or the extraction changes, so old files are not reused.
CACHE_FORMAT = 2
#: Defaults of ``paths.cache_max_gb`` and ``paths.cache_lock_timeout_h`` (conf/paths/default.yaml).
DEFAULT_MAX_GB = 20.0
DEFAULT_LOCK_TIMEOUT_H = 2.0


@dataclass
class FeatureSet:
    """``features[view, i]`` is the feature vector of sample ``i``; ``labels[i]`` its label."""

    features: torch.Tensor  # [views, N, F], float32
    labels: torch.Tensor  # [N], int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: torch.device | str) -> FeatureSet:
        return FeatureSet(self.features.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Entry:
    """One stored entry, as listed: its key, size in bytes, last use (epoch seconds) and
    description (``{}`` when its ``.json`` is missing or unreadable)."""

    key: str
    size: int
    last_used: float
    description: dict[str, Any]


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FeatureCache:
    """Feature entries under ``root``; ``root=None`` keeps nothing on disk (every call extracts).

    Args:
        root: the features folder (``<paths.cache_dir>/features``).
        max_gb: ``paths.cache_max_gb``: after a write, least recently used entries are deleted
            until the entries take at most this many GB (1e9 bytes); ``None``: no limit.
        lock_timeout_h: ``paths.cache_lock_timeout_h``: the longest wait for a key's lock.
    """

    def __init__(
        self, root: str | os.PathLike | None, *, max_gb: float | None = DEFAULT_MAX_GB, lock_timeout_h: float = DEFAULT_LOCK_TIMEOUT_H
    ) -> None:
        self.root = None if root is None else Path(os.path.expanduser(str(root)))
        self.max_gb = check_positive("paths.cache_max_gb", max_gb, optional=True)
        self.lock_timeout_h = check_positive("paths.cache_lock_timeout_h", lock_timeout_h)

    # -- paths ---------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / f"{key}.pt"

    def meta_path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / f"{key}.json"

    def lock_path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / "locks" / f"{key}.lock"

    def shard_path(self, key: str, rank: int, world: int) -> Path:
        assert self.root is not None
        return self.root / "shards" / f"{key}.{rank}-of-{world}.pt"

    # -- locking -------------------------------------------------------------------------------

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock (waiting at most ``lock_timeout_h``); nothing without a root."""
        if self.root is None:
            yield
            return
        self.lock_path(key).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path(key))
        try:
            lock.acquire(timeout=self.lock_timeout_h * 3600)
        except Timeout:
            raise ConfigError(
                f"Waited paths.cache_lock_timeout_h={self.lock_timeout_h:g} h for the feature-cache lock {self.lock_path(key)}: "
                "another process holds it while it extracts the same features. If that process is still working, "
                "wait for it or raise paths.cache_lock_timeout_h; if it hangs, stop it (its lock goes with it)."
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _try_lock(self, key: str) -> FileLock | None:
        """``key``'s lock if nobody holds it now, else None (never waits: no deadlock while
        the caller holds another key's lock)."""
        self.lock_path(key).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path(key))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return lock

    # -- entries -------------------------------------------------------------------------------

    def read(self, key: str) -> FeatureSet:
        """The tensors of ``key`` without checks (for a DDP rank whose rank 0 just checked them)."""
        data = torch.load(self.path(key), map_location="cpu", weights_only=True)
        return FeatureSet(data["features"], data["labels"])

    def load(self, key: str) -> FeatureSet | None:
        """The stored features of ``key`` after checking them against the checksum and shape in
        ``<key>.json``, or None when absent or damaged (then extracted again). A good read
        records the entry's last use. Call it holding :meth:`locked`."""
        if self.root is None or not self.path(key).is_file():
            return None
        try:
            meta = json.loads(self.meta_path(key).read_text())
            if meta.get("sha256") != file_sha256(self.path(key)):
                raise ValueError("its sha256 differs from the one recorded when it was written")
            data = torch.load(self.path(key), map_location="cpu", weights_only=True)
            if data.get("format") != CACHE_FORMAT or data.get("key") != key:
                raise ValueError("it is of another format or key")
            features = FeatureSet(data["features"], data["labels"])
            if list(features.features.shape) != meta.get("shape") or len(features) != features.features.shape[1]:
                raise ValueError(f"its shape {list(features.features.shape)} differs from the recorded {meta.get('shape')}")
        except Exception as error:  # noqa: BLE001 - a damaged entry is only a cache miss
            log.warning("The cached feature file %s is damaged (%s); extracting the features again.", self.path(key), error)
            return None
        self._write_meta(key, {**meta, "last_used": time.time()})
        return features

    def save(self, key: str, features: FeatureSet, description: dict[str, Any]) -> None:
        """Write ``features`` and their description atomically, then keep the cache under its
        size limit. Call it holding :meth:`locked`."""
        if self.root is None:
            return
        payload = {"format": CACHE_FORMAT, "key": key, "features": features.features.contiguous(), "labels": features.labels}
        checksum: dict[str, str] = {}

        def write(tmp: Path) -> None:
            torch.save(payload, tmp)
            checksum["sha256"] = file_sha256(tmp)

        atomic_write(self.path(key), write)
        now = time.time()
        self._write_meta(
            key, {**description, "shape": list(features.features.shape), "sha256": checksum["sha256"], "created": now, "last_used": now}
        )
        self.evict(keep=key)

    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        write_json_atomic(self.meta_path(key), meta)

    def entries(self) -> list[Entry]:
        """Every stored entry, least recently used first."""
        if self.root is None or not self.root.is_dir():
            return []
        found = []
        for pt in self.root.glob("*.pt"):
            key, meta_path = pt.stem, pt.with_suffix(".json")
            try:
                size, used = pt.stat().st_size, pt.stat().st_mtime
            except FileNotFoundError:  # deleted meanwhile
                continue
            try:
                description = json.loads(meta_path.read_text())
                size += meta_path.stat().st_size
            except (OSError, ValueError):
                description = {}
            found.append(Entry(key, size, float(description.get("last_used", used)), description))
        return sorted(found, key=lambda e: e.last_used)

    def remove(self, key: str) -> bool:
        """Delete ``key``'s entry unless it is in use (its lock held); True when deleted."""
        lock = self._try_lock(key)
        if lock is None:
            return False
        try:
            self.path(key).unlink(missing_ok=True)
            self.meta_path(key).unlink(missing_ok=True)
        finally:
            lock.release()
        return True

    def evict(self, keep: str | None = None) -> list[Entry]:
        """Delete least recently used entries (never ``keep`` nor one in use) until the cache
        holds at most ``max_gb``; the deleted entries."""
        if self.root is None or self.max_gb is None:
            return []
        entries = self.entries()
        total, limit = sum(e.size for e in entries), self.max_gb * 1e9
        removed = []
        for entry in entries:
            if total <= limit:
                break
            if entry.key != keep and self.remove(entry.key):
                total -= entry.size
                removed.append(entry)
                log.info("Feature cache over paths.cache_max_gb=%g: deleted the least recently used entry %s.", self.max_gb, entry.key)
        if total > limit:
            log.warning(
                "The feature cache %s holds %.2f GB, over paths.cache_max_gb=%g: the rest is in use or was just written.",
                self.root, total / 1e9, self.max_gb,
            )
        return removed
