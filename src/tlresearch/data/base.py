"""Shared machinery of the image-classification DataModules.

Everything the concrete DataModules (:mod:`.pets`, :mod:`.cats_dogs`, :mod:`.folder`) have in
common lives here once:

* robust image decoding (:func:`load_rgb`, :func:`to_rgb`, :func:`check_image`): every mode to
  RGB, decompression bombs refused, bad files reported instead of crashing;
* scanning a tree of images into a cached, atomically written manifest (:func:`scan_images`);
* deterministic stratified splits and per-class subsets (:func:`stratified_split`,
  :func:`take_per_class`);
* a dataset that never crashes mid-epoch on a bad file (:class:`ImageListDataset`);
* safe archive extraction and downloads that fail with a clear message (:func:`safe_extract_zip`,
  :func:`download_file`);
* the DataModule base classes (:class:`ImageClassificationDataModule`, and
  :class:`ScannedImageDataModule` for datasets known only by their folder layout).

A subclass only says where its files are and how a file's path maps to its class and split.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import stat
import time
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, NamedTuple
from urllib.error import URLError

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tlresearch.core.config import check_bool, check_choice, check_int, from_node, is_int
from tlresearch.core.errors import ConfigError
from tlresearch.core.files import write_json_atomic

from .sampler import ResumableTrainData
from .transforms import Augmentation, Preprocessing, eval_transform, train_transform

log = logging.getLogger(__name__)

#: File suffixes treated as images; anything else is dropped as "not an image" without opening it.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
#: ``decodes``: PIL fully decodes the file. ``jfif``: additionally the JFIF marker is in its first 10 bytes.
IMAGE_FILTERS = ("decodes", "jfif")
SPLITS = ("train", "val", "test")
#: Bump when the scanner's verdicts change, so stale manifests are not reused.
MANIFEST_FORMAT = 1
#: How many dropped files are logged one by one before the rest are only counted.
_MAX_LOGGED_DROPS = 20


class Sample(NamedTuple):
    """One labelled image."""

    path: str  # absolute path, opened by the dataset
    rel: str  # '/'-separated path relative to the dataset root: what manifests and hashes record
    label: int
    group: str  # stratification key: the class name (pets' species target stratifies by breed)


# --------------------------------------------------------------------------------------------
# Image decoding
# --------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Return a new 8-bit RGB copy of ``image``, whatever its mode.

    PIL's plain ``convert("RGB")`` clips 16-bit greyscale to white and drops alpha onto black;
    here wide greyscale is rescaled to 8 bits and transparency is composited onto white.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "I" or mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        # 'I' also comes from 8-bit sources; rescale only what really is 16-bit.
        if mode != "I" or image.format == "PNG" or array.max(initial=0) > 255:
            array = array / 257.0
        return _grey_array_to_rgb(array)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if array.size and np.nanmax(array) <= 1.0:  # float images are usually in [0, 1]
            array = array * 255.0
        return _grey_array_to_rgb(np.nan_to_num(array))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _grey_array_to_rgb(array: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Fully decode the image at ``path`` into RGB.

    Raises whatever PIL raises for a bad file. An image over ``PIL.Image.MAX_IMAGE_PIXELS``
    (a possible decompression bomb) raises ``DecompressionBombError`` before it is decoded,
    where PIL itself would only warn (it refuses only at twice the limit).
    """
    with Image.open(path) as image:
        # Checked here rather than by turning PIL's warning into an error: warning filters are
        # process-wide and not thread-safe, and the scanner decodes in threads.
        limit = Image.MAX_IMAGE_PIXELS
        if limit and image.width * image.height > limit:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} = {image.width * image.height} pixels is over "
                f"PIL.Image.MAX_IMAGE_PIXELS = {limit} (a possible decompression bomb)"
            )
        image.load()  # decode every pixel now: a truncated file fails here, not mid-transform
        return to_rgb(image)


def has_jfif_header(path: str | os.PathLike) -> bool:
    """The heuristic the Keras cats-vs-dogs tutorial uses: ``b"JFIF"`` within the first 10 bytes."""
    with open(path, "rb") as fh:
        return b"JFIF" in fh.read(10)


def check_image(path: str | os.PathLike, image_filter: str = "decodes") -> str | None:
    """Why the file at ``path`` must be dropped, or ``None`` when it is a usable image.

    Reasons: ``"not an image"`` (suffix not in :data:`IMAGE_EXTENSIONS`),
    ``"undecodable: <error>"`` (PIL cannot fully decode it, or it is a decompression bomb),
    ``"no JFIF header"`` (only with ``image_filter="jfif"``).
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image"
    try:
        load_rgb(path)
    except Exception as error:  # noqa: BLE001 - untrusted files fail in many ways; each is a verdict
        return f"undecodable: {_error_text(error)}"
    if image_filter == "jfif" and not has_jfif_header(path):
        return "no JFIF header"
    return None


def _error_text(error: BaseException) -> str:
    text = str(error).strip() or "empty error message"
    return f"{type(error).__name__}: {text}"


def reason_category(reason: str) -> str:
    """The part of a drop reason before its first colon ("undecodable: ..." -> "undecodable")."""
    return reason.split(":", 1)[0]


# --------------------------------------------------------------------------------------------
# Scanning a tree of images into a manifest
# --------------------------------------------------------------------------------------------


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
    def from_json(cls, data: Mapping[str, Any], path: str | None = None) -> "Manifest":
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

    def __enter__(self) -> "_Inline":
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


# --------------------------------------------------------------------------------------------
# Splits and subsets
# --------------------------------------------------------------------------------------------


def check_fractions(fractions: Mapping[str, Any]) -> dict[str, float]:
    """Validate ``{"data.val_fraction": v, ...}``: each in [0, 1), their sum < 1."""
    checked: dict[str, float] = {}
    for key, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{key}={value!r}: must be a number in [0, 1) (the share of images held out), e.g. {key}=0.1.")
        checked[key] = float(value)
    if sum(checked.values()) >= 1:
        keys = " + ".join(f"{k}={v}" for k, v in checked.items())
        raise ConfigError(f"{keys} = {sum(checked.values()):g}: the held-out fractions must sum to less than 1, leaving images to train on.")
    return checked


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``n`` items each held-out split takes; at least one item always stays for training.

    Rounds to nearest; a split with a non-zero fraction that rounds to nothing still gets one
    item while one is left to train on, in order (so tiny classes reach val first, then test).
    """
    counts = [math.floor(n * f + 0.5) for f in fractions]
    for i, fraction in enumerate(fractions):
        if fraction > 0 and counts[i] == 0 and sum(counts) < n - 1:
            counts[i] = 1
    while sum(counts) > max(n - 1, 0):
        counts[counts.index(max(counts))] -= 1
    return counts


def _group_order(samples: Iterable[Sample], seed: int, salt: str) -> dict[str, list[Sample]]:
    """Samples per group, each group in a seeded random order.

    Each group has its own RNG, seeded from (seed, salt, group): a group's order does not depend
    on which other groups exist. Python's string seeding is stable across runs and platforms.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    for name, members in groups.items():
        members.sort(key=lambda s: s.rel)
        random.Random(f"{seed}:{salt}:{name}").shuffle(members)
    return dict(sorted(groups.items()))


def stratified_split(
    samples: Iterable[Sample],
    seed: int,
    *,
    fractions: Mapping[str, float] | None = None,
    per_group: Mapping[str, int] | None = None,
) -> dict[str, list[Sample]]:
    """Split ``samples`` into ``"train"`` plus held-out splits, stratified by ``Sample.group``.

    Held-out sizes come either from ``fractions`` (``{"val": 0.1, "test": 0.1}``, see
    :func:`split_counts`) or from ``per_group`` (``{"val": 20}`` images per group; at least one
    image of each group stays in train). The same samples and seed always give the same split.
    Each split is sorted by relative path.
    """
    names = list((fractions or per_group or {}).keys())
    out: dict[str, list[Sample]] = {"train": [], **{name: [] for name in names}}
    clamped: list[str] = []
    for group, members in _group_order(samples, seed, "split").items():
        if per_group is not None:
            counts = [min(per_group[name], len(members) - 1) for name in names]
            while sum(counts) > max(len(members) - 1, 0):
                counts[counts.index(max(counts))] -= 1
            if counts != [per_group[name] for name in names]:
                clamped.append(f"{group} ({len(members)})")
        else:
            counts = split_counts(len(members), [fractions[name] for name in names])  # type: ignore[index]
        start = 0
        for name, count in zip(names, counts):
            out[name] += members[start : start + count]
            start += count
        out["train"] += members[start:]
    if clamped:
        log.warning(
            "Too few images to hold out %s per class for: %s; kept one per class for training.", dict(per_group or {}), ", ".join(clamped)
        )
    return {name: sorted(split, key=lambda s: s.rel) for name, split in out.items()}


def take_per_class(samples: Iterable[Sample], k: int, seed: int) -> list[Sample]:
    """A deterministic subset of at most ``k`` samples per label.

    Subsets are nested: for one seed, the subset for ``k`` contains the subset for any smaller ``k``.
    """
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_label[str(sample.label)].append(sample)
    chosen: list[Sample] = []
    for label, members in sorted(by_label.items()):
        members.sort(key=lambda s: s.rel)
        random.Random(f"{seed}:subset:{label}").shuffle(members)
        chosen += members[:k]
    return sorted(chosen, key=lambda s: s.rel)


def samples_sha256(samples: Iterable[Sample]) -> str:
    """sha256 of the sorted ``relative path<TAB>label`` lines: identifies exactly which data was used."""
    lines = sorted(f"{s.rel}\t{s.label}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class ImageListDataset(Dataset):
    """``(image_tensor, label)`` for a list of :class:`Sample`.

    A file that fails to load at read time (deleted, corrupted after the scan) never crashes an
    epoch: it is logged once and replaced by the next readable image *of the same class*, so
    batch shapes hold and no image carries a wrong label.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self._bad: set[int] = set()
        self._by_label: dict[int, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """Every sample's label, in order (as torchvision datasets expose it)."""
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        label = self.samples[index].label
        image = self._load_same_class(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _load_same_class(self, index: int) -> Image.Image:
        image = self._try_load(index)
        if image is not None:
            return image
        for candidate in self._same_label_after(index):
            image = self._try_load(candidate)
            if image is not None:
                return image
        raise RuntimeError(f"No readable image left with label {self.samples[index].label} (first failure: {self.samples[index].path}).")

    def _try_load(self, index: int) -> Image.Image | None:
        if index in self._bad:
            return None
        try:
            return load_rgb(self.samples[index].path)
        except Exception as error:  # noqa: BLE001 - any unreadable file is skipped, not fatal
            self._bad.add(index)
            log.warning("Could not read %s (%s); using another image of the same class instead.", self.samples[index].path, _error_text(error))
            return None

    def _same_label_after(self, index: int) -> list[int]:
        """The other indices with the label of ``index``, those after it first, wrapping around."""
        if self._by_label is None:
            by_label: dict[int, list[int]] = defaultdict(list)
            for i, sample in enumerate(self.samples):
                by_label[sample.label].append(i)
            self._by_label = dict(by_label)
        same = self._by_label[self.samples[index].label]
        start = bisect.bisect_right(same, index)
        return same[start:] + [i for i in same[:start] if i != index]


# --------------------------------------------------------------------------------------------
# Archives and downloads
# --------------------------------------------------------------------------------------------


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
        f"data.download=true: could not download {what} from {', '.join(urls)} ({_error_text(error)}). "
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
            f"data.download=true: downloading {what} from {url} failed ({_error_text(error)}). "
            f"Run again, or download it by hand into {dest_dir / filename}."
        ) from error
    final = dest_dir / filename
    os.replace(part, final)
    return final


# --------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------


def coerce_augmentation(value: Any) -> Augmentation:
    """``None`` (the default augmentation), an :class:`Augmentation`, or a mapping of its fields."""
    if value is None:
        return Augmentation()
    aug = from_node(Augmentation, value, "data.augment")
    scale = aug.scale
    if len(scale) != 2 or not all(isinstance(s, (int, float)) for s in scale) or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"data.augment.scale={list(scale)!r}: must be [min, max] with 0 < min <= max <= 1, e.g. [0.08, 1.0].")
    return aug


def coerce_preprocessing(value: Any) -> Preprocessing:
    """``None`` (ImageNet defaults at 224 px), a :class:`Preprocessing`, or a mapping of its fields.

    Hydra's ``instantiate(cfg, preprocessing=pre)`` merges ``pre`` into the config, so it arrives
    as a DictConfig; this turns it back into a :class:`Preprocessing`.
    """
    if value is None:
        return Preprocessing()
    return from_node(Preprocessing, value, "preprocessing")


def auto_num_workers() -> int:
    """min(8, CPUs available to this process - 1), at least 0."""
    try:
        cpus = len(os.sched_getaffinity(0))  # honours taskset/cgroup pinning, unlike cpu_count
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def resolve_num_workers(value: int | str) -> int:
    """``"auto"`` -> :func:`auto_num_workers`; a non-negative int is used as is."""
    if value == "auto":
        return auto_num_workers()
    if is_int(value) and value >= 0:
        return int(value)
    raise ConfigError(f"data.num_workers={value!r}: must be a non-negative integer or 'auto' (min(8, CPUs - 1)).")


def resolve_pin_memory(value: bool | str) -> bool:
    """``"auto"`` -> whether CUDA is available; a bool is used as is."""
    if value == "auto":
        return torch.cuda.is_available()
    if isinstance(value, bool):
        return value
    raise ConfigError(f"data.pin_memory={value!r}: must be true, false or 'auto' (true when a CUDA device is available).")


def _check_root(root: Any) -> Path:
    if not isinstance(root, (str, os.PathLike)) or not str(root).strip():
        raise ConfigError(f"data.root={root!r}: must be a directory path, e.g. data.root=/datasets/pets.")
    # Absolute now, so messages, manifests and describe() do not depend on a later chdir.
    return Path(os.path.expandvars(os.path.expanduser(str(root)))).absolute()


# --------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------


class SplitLoaders:
    """Lightning's three loader hooks, each a call of ``self.dataloader(split)``: every
    DataModule here (images or cached features) builds its loaders in one method."""

    def dataloader(self, split: str) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")


class ImageClassificationDataModule(SplitLoaders, ResumableTrainData, pl.LightningDataModule):
    """Base of every image-classification DataModule: arguments, transforms, loaders, provenance.

    Subclasses set ``self._classes`` in their constructor (available without touching the
    network) and implement :meth:`prepare_data` (download) and :meth:`_build_splits`.

    Args:
        root: where the dataset lives (or is downloaded to).
        batch_size: images per batch, for every split.
        num_workers: DataLoader worker processes; ``"auto"`` = min(8, CPUs - 1).
        seed: fixes the splits and the per-class subset. (The shuffle order follows the global
            seed, ``torch.initial_seed()`` when a loader is built, so training seeds can vary over
            one fixed split.)
        download: whether :meth:`prepare_data` may download a missing dataset.
        augment: fields of :class:`~tlresearch.data.transforms.Augmentation` for the training
            split (``None`` = its defaults; ``{"enabled": False}`` trains on the eval transform).
        preprocessing: the backbone's :class:`~tlresearch.data.transforms.Preprocessing`
            (``None`` = ImageNet defaults at 224 px); also settable later with :meth:`set_preprocessing`.
        pin_memory: DataLoader ``pin_memory``; ``"auto"`` = whether CUDA is available.
        max_per_class: keep at most this many *training* images per class (a deterministic,
            nested subset for small-data experiments); val and test stay whole.
        in_memory: decode every image once into RAM at the backbone's resize size and serve
            batches from there (:mod:`tlresearch.data.memory`; for small datasets).
    """

    #: Name recorded by :meth:`describe`.
    name: ClassVar[str] = "images"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        seed: int = 0,
        download: bool = True,
        augment: Mapping[str, Any] | Augmentation | None = None,
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
        pin_memory: bool | str = "auto",
        max_per_class: int | None = None,
        in_memory: bool = False,
    ) -> None:
        super().__init__()
        self.root = _check_root(root)
        self.batch_size = check_int("data.batch_size", batch_size, minimum=1)
        self.num_workers = resolve_num_workers(num_workers)
        self.seed = check_int("data.seed", seed)
        self.download = check_bool("data.download", download)
        self.augmentation = coerce_augmentation(augment)
        self.preprocessing = coerce_preprocessing(preprocessing)
        self.pin_memory = resolve_pin_memory(pin_memory)
        self.max_per_class = check_int("data.max_per_class", max_per_class, minimum=1, optional=True)
        self.in_memory = check_bool("data.in_memory", in_memory)
        self._in_memory: dict[str, Any] = {}  # split -> images held in RAM (data/memory.py)
        self._classes: list[str] = getattr(self, "_classes", [])
        self._splits: dict[str, list[Sample]] | None = None
        self._datasets: dict[str, ImageListDataset] = {}
        self._dropped: list[tuple[str, str]] = []

    # -- classes ------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names; label ``i`` is ``classes[i]``."""
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    # -- transforms ---------------------------------------------------------------------------

    def set_preprocessing(self, preprocessing: Preprocessing | Mapping[str, Any]) -> None:
        """Use the backbone's preprocessing; datasets already built get the new transforms too."""
        self.preprocessing = coerce_preprocessing(preprocessing)
        for split, dataset in self._datasets.items():
            dataset.transform = self._transform(split)

    def _transform(self, split: str) -> Callable[[Image.Image], Any]:
        if split == "train":
            return train_transform(self.preprocessing, self.augmentation)
        return eval_transform(self.preprocessing)

    # -- lifecycle ----------------------------------------------------------------------------

    def prepare_data(self) -> None:  # pragma: no cover - every subclass overrides it
        """Download the dataset if needed (Lightning calls it on one process per node)."""

    def _build_splits(self) -> tuple[dict[str, list[Sample]], list[tuple[str, str]]]:
        """``({"train": [...], "val": [...], "test": [...]}, dropped (path, reason) pairs)``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val/test datasets (once: later calls return at once)."""
        if self._splits is not None:
            return
        splits, dropped = self._build_splits()
        splits = {name: list(splits.get(name, [])) for name in SPLITS}
        self._check_train_covers_classes(splits["train"])
        if self.max_per_class is not None:
            splits["train"] = take_per_class(splits["train"], self.max_per_class, self.seed)
        self._splits, self._dropped = splits, list(dropped)
        self._datasets = {name: ImageListDataset(samples, self._transform(name)) for name, samples in splits.items()}
        sizes = ", ".join(f"{name} {len(samples)}" for name, samples in splits.items())
        log.info("%s: %d classes; %s images; %d files dropped.", self.name, self.num_classes, sizes, len(dropped))

    def _check_train_covers_classes(self, train: Sequence[Sample]) -> None:
        present = {s.label for s in train}
        missing = [name for i, name in enumerate(self._classes) if i not in present]
        if missing:
            raise ConfigError(
                f"data.root={str(self.root)!r}: no training images for class(es) {', '.join(missing)}; every class needs "
                "at least one usable training image. Add images or remove those classes."
            )

    def dataset(self, split: str) -> ImageListDataset:
        """The dataset of ``"train"``, ``"val"`` or ``"test"`` (set up on first use)."""
        check_choice("split", split, SPLITS)
        self.setup()
        return self._datasets[split]

    # -- loaders ------------------------------------------------------------------------------

    def dataloader(self, split: str, *, shuffle: bool | None = None) -> DataLoader:
        """A DataLoader over ``split``; only train shuffles by default, with a generator seeded from the global seed."""
        shuffle = (split == "train") if shuffle is None else shuffle
        dataset: Any = self.dataset(split)
        if self.in_memory:
            from .memory import hold_in_memory  # imports this module

            pre = self.preprocessing
            dataset = hold_in_memory(self._in_memory, split, dataset, pre.resize_size, pre.interpolation_mode, self.num_workers)
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0, drop_last=False)
        if shuffle:
            # Shuffle order and augmentation follow the global seed set by seed_everything, not
            # data.seed: runs with different training seeds see different orders over the same,
            # fixed split. The resumable loader makes them a function of (seed, epoch, image), so
            # a run resumed mid-epoch continues exactly (data/sampler.py).
            return self.resumable_train_loader(dataset, seed=torch.initial_seed(), **common)
        return DataLoader(dataset, shuffle=False, generator=torch.Generator().manual_seed(torch.initial_seed()), **common)

    # -- provenance ---------------------------------------------------------------------------

    def _describe_config(self) -> dict[str, Any]:
        """Dataset-specific settings for :meth:`describe`."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Provenance: which data, which split, which files were dropped and why (JSON-serialisable)."""
        self.setup()
        assert self._splits is not None
        splits = self._splits
        every = [s for name in SPLITS for s in splits[name]]
        return {
            "dataset": self.name,
            "root": str(self.root.resolve()),
            "classes": self.classes,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "max_per_class": self.max_per_class,
            **self._describe_config(),
            "num_samples": {name: len(splits[name]) for name in SPLITS},
            "manifest_sha256": samples_sha256(every),
            "split_sha256": {name: samples_sha256(splits[name]) for name in SPLITS},
            "dropped": {
                "total": len(self._dropped),
                "by_reason": dict(sorted(Counter(reason_category(r) for _, r in self._dropped).items())),
            },
        }


class ScannedImageDataModule(ImageClassificationDataModule):
    """A dataset known only by its folder layout: every file is checked once by :func:`scan_images`.

    Subclasses give the folder to scan (:meth:`_scan_root`), the path prefix of that folder
    inside ``root`` (:attr:`_rel_prefix`) and :meth:`_locate` (relative path -> split, class).
    Splits present on disk are used as they are; missing val/test splits are carved out of
    train (or, without any split folders, out of everything) by ``val_fraction``/``test_fraction``.

    Args:
        filter: ``"decodes"`` keeps every file PIL fully decodes; ``"jfif"`` additionally
            requires the JFIF marker in the first 10 bytes.
        val_fraction, test_fraction: shares held out per class when the split is not on disk.
        cache_dir: where manifests go, one subfolder per dataset root (``None``:
            ``root/.tlresearch`` when writable, else the user's cache).
        **common: the arguments of :class:`ImageClassificationDataModule`.
    """

    _rel_prefix: str = ""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        filter: str = "decodes",  # noqa: A002 - the config key is data.filter
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        cache_dir: str | os.PathLike | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.image_filter = check_choice("data.filter", filter, IMAGE_FILTERS)
        fractions = check_fractions({"data.val_fraction": val_fraction, "data.test_fraction": test_fraction})
        self.val_fraction, self.test_fraction = fractions["data.val_fraction"], fractions["data.test_fraction"]
        self.cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))
        self._manifest: Manifest | None = None
        self._classes = self._read_classes()

    def _read_classes(self) -> list[str]:
        """The class names, known at construction without scanning (a fixed list, or folder names)."""
        raise NotImplementedError

    def _scan_root(self) -> Path:
        raise NotImplementedError

    def _locate(self, rel: PurePosixPath) -> tuple[str | None, str] | None:
        """``(split or None, class name)`` of a file, or ``None`` when it is in no class folder."""
        raise NotImplementedError

    def _ensure_data(self, *, allow_download: bool) -> None:
        """Make the files to scan exist (extract/download), or raise a ConfigError saying how."""

    def prepare_data(self) -> None:
        """Download/extract if needed, then scan once (the manifest is shared with every process)."""
        self._ensure_data(allow_download=self.download)
        self.scan()

    def scan(self) -> Manifest:
        """The manifest of this dataset: read from the cache when the files are unchanged, else scanned."""
        if self._manifest is None:
            self._ensure_data(allow_download=self.download)
            scan_root = self._scan_root()
            self._manifest = scan_images(
                scan_root,
                label_of=self._class_of,
                image_filter=self.image_filter,
                manifest_path=self._manifest_path(),
                key_extra=self._scan_key_extra(),
                workers=max(1, self.num_workers),
            )
        return self._manifest

    def _manifest_path(self) -> Path:
        filename = f"manifest-{self.name}-{self.image_filter}.json"
        if self.cache_dir is None:
            return default_cache_dir(self.root) / filename
        # A shared cache holds many datasets: one folder per dataset root.
        tag = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.name}-{tag}" / filename

    def _scan_key_extra(self) -> dict[str, Any]:
        """What, besides the files and the filter, decides a manifest's verdicts (part of its cache key)."""
        return {"dataset": self.name, "classes": self._classes, "splits": sorted(self._splits_on_disk())}

    def _class_of(self, rel: PurePosixPath) -> str | None:
        located = self._locate(rel)
        return None if located is None else located[1]

    def _build_splits(self) -> tuple[dict[str, list[Sample]], list[tuple[str, str]]]:
        manifest = self.scan()
        prefix = self._rel_prefix
        index = {name: i for i, name in enumerate(self._classes)}
        scan_root = self._scan_root()
        on_disk: dict[str | None, list[Sample]] = defaultdict(list)
        for rel, _ in manifest.kept:
            located = self._locate(PurePosixPath(rel))
            if located is None:  # cannot happen for a manifest built with the same classes
                continue
            split, name = located
            on_disk[split].append(Sample(str(scan_root / rel), prefix + rel, index[name], name))
        splits = self._carve(on_disk)
        if not any(splits.values()):
            raise ConfigError(self._no_images_message(manifest))
        dropped = [(prefix + rel, reason) for rel, reason in manifest.dropped]
        return splits, dropped

    def _splits_on_disk(self) -> frozenset[str]:
        """Which of val/test exist as folders (those are used as they are, never carved)."""
        return frozenset()

    def _carve(self, on_disk: Mapping[str | None, list[Sample]]) -> dict[str, list[Sample]]:
        present = self._splits_on_disk()
        pool = on_disk.get("train", []) + on_disk.get(None, [])
        missing = {name: frac for name, frac in (("val", self.val_fraction), ("test", self.test_fraction)) if name not in present}
        splits = stratified_split(pool, self.seed, fractions=missing)
        for name in ("val", "test"):
            if name in present:
                splits[name] = sorted(on_disk.get(name, []), key=lambda s: s.rel)
        return splits

    def _no_images_message(self, manifest: Manifest) -> str:
        by_reason = Counter(reason_category(r) for _, r in manifest.dropped)
        reasons = ", ".join(f"{count} {why}" for why, count in sorted(by_reason.items()))
        seen = f" ({len(manifest.dropped)} files skipped: {reasons}; each is listed in {manifest.path})" if manifest.dropped else ""
        return (
            f"data.root={str(self.root)!r}: no usable images found under {manifest.scan_root}{seen}. "
            f"Point data.root at a folder with images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in one folder per class."
        )

    def _describe_config(self) -> dict[str, Any]:
        manifest = self.scan()
        return {
            "filter": self.image_filter,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "manifest_path": manifest.path,
        }
