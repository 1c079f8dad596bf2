"""The base of a dataset known only by its folder layout: scanned once, split by fractions.

:class:`ScannedImageDataModule` turns a folder of images into train/val/test: every file is
checked once by :func:`~tlresearch.data.manifest.scan_images` (the verdicts are cached in a
manifest), each kept file is placed by the subclass's :meth:`~ScannedImageDataModule._locate`
(relative path -> split, class), and the splits that are not on disk are carved out per class
by :func:`~tlresearch.data.splits.stratified_split`. See :mod:`.folder` and :mod:`.cats_dogs`.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tlresearch.core.config import check_choice
from tlresearch.core.errors import ConfigError

from .datamodule import ImageClassificationDataModule
from .images import IMAGE_EXTENSIONS, IMAGE_FILTERS, Sample, reason_category
from .manifest import Manifest, default_cache_dir, scan_images
from .splits import check_fractions, stratified_split


class ScannedImageDataModule(ImageClassificationDataModule):
    """A dataset known only by its folder layout: every file is checked once by :func:`scan_images`.

    Subclasses give the folder to scan (:meth:`_scan_root`), the path prefix of that folder
    inside ``root`` (:attr:`_rel_prefix`) and :meth:`_locate` (relative path -> split, class).
    Splits present on disk are used as they are; missing val/test splits are carved out of
    train (or, without any split folders, out of everything) by ``val_fraction``/``test_fraction``.

    Args:
        filter: ``"decodes"`` keeps every file PIL fully decodes; ``"jfif"`` additionally
            requires the JFIF marker in the first 10 bytes.
        val_fraction, test_fraction: shares held out per class when the split is not on disk
            (neither above the share left to training; a small class is capped so that training
            keeps at least as many images as each held-out split, see
            :func:`~tlresearch.data.splits.cap_held_out`).
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
