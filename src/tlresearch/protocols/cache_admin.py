"""Listing and clearing the feature cache (``python -m tlresearch.cache list|clear``).

The entries and how they are deleted are ``protocols/feature_store.py``'s; this module turns
them into a readable table and removes entries by age. An entry in use (its lock held by a
running extraction or read) is never removed: it is reported as kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tlresearch.core.config import check_positive
from tlresearch.protocols.feature_store import Entry, FeatureCache

#: The features folder inside ``paths.cache_dir``.
FEATURES_SUBDIR = "features"


def feature_cache(cache_dir: str | Path, max_gb: float | None = None) -> FeatureCache:
    """The feature cache of ``paths.cache_dir`` = ``cache_dir``."""
    return FeatureCache(Path(cache_dir).expanduser() / FEATURES_SUBDIR, max_gb=max_gb)


def _backbone(entry: Entry) -> str:
    backbone = entry.description.get("backbone") or {}
    name = backbone.get("name") or "?"
    return f"{name} ({backbone['weights']})" if backbone.get("weights") else name


def _dataset(entry: Entry) -> str:
    dataset = entry.description.get("dataset") or {}
    return dataset.get("name") or "?"


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _age(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit} ago"
    return "just now"


def entries_table(cache: FeatureCache, now: float | None = None) -> str:
    """The entries, most recently used first: key, backbone, dataset, split, views x samples x
    features, size and last use, then the total (against the limit, when there is one)."""
    now = time.time() if now is None else now
    entries = cache.entries()[::-1]
    if not entries:
        return f"The feature cache {cache.root} is empty.\n"
    rows = [("key", "backbone", "dataset", "split", "shape", "size", "last use")]
    for e in entries:
        shape = "x".join(str(n) for n in e.description.get("shape", [])) or "?"
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        rows.append((e.key[:12], _backbone(e), _dataset(e), str(e.description.get("split", "?")), shape, _size(e.size),
                     f"{last} ({_age(now - e.last_used)})"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    total = sum(e.size for e in entries)
    limit = f" of paths.cache_max_gb={cache.max_gb:g} GB" if cache.max_gb is not None else ""
    lines.append(f"{len(entries)} entries, {_size(total)}{limit}, in {cache.root}")
    return "\n".join(lines) + "\n"


@dataclass
class Cleared:
    """What :func:`clear_entries` did: the entries removed and those kept because in use."""

    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"removed {e.key[:12]}  {_backbone(e)}  {_dataset(e)}  {e.description.get('split', '?')}  {_size(e.size)}"
                 for e in self.removed]
        lines += [f"kept {e.key[:12]}: in use by a running process" for e in self.in_use]
        lines.append(f"Removed {len(self.removed)} entries ({_size(sum(e.size for e in self.removed))}).")
        return "\n".join(lines) + "\n"


def clear_entries(cache: FeatureCache, older_than_days: float | None = None, now: float | None = None) -> Cleared:
    """Remove every entry, or only those unused for more than ``older_than_days`` days."""
    now = time.time() if now is None else now
    if older_than_days is not None:
        check_positive("--older-than", older_than_days)
    cleared = Cleared()
    for entry in cache.entries():
        if older_than_days is not None and now - entry.last_used <= older_than_days * 86400:
            continue
        (cleared.removed if cache.remove(entry.key) else cleared.in_use).append(entry)
    return cleared
