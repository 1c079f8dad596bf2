"""Any image-folder tree, one folder per class.

Two layouts are recognised:

* split: ``root/train/<class>/...`` with optional ``root/val/<class>/...`` and
  ``root/test/<class>/...``; a missing val or test split is carved out of train;
* flat: ``root/<class>/...``, split into train/val/test by the fractions.

Class names come from the folder names (sorted), so they are known right after construction.
Files are checked once and recorded in a manifest, as for Cats vs Dogs.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from tlresearch.core.errors import ConfigError

from .scanned import ScannedImageDataModule

SPLIT_DIRS = ("train", "val", "test")


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolderDataModule(ScannedImageDataModule):
    """An image-folder dataset (``root/train/<class>/`` or ``root/<class>/``).

    Args:
        root: the dataset folder; it must exist (class names are read from it at construction).
        filter: ``"decodes"`` or ``"jfif"``, see :class:`~tlresearch.data.scanned.ScannedImageDataModule`.
        val_fraction: share of each class carved out for val when there is no ``root/val``
            (a share of ``root/train`` in the split layout, of everything in the flat one).
        test_fraction: the same for test when there is no ``root/test``.
        cache_dir: where the manifest is written (``None`` = ``root/.tlresearch`` when writable).
        **common: the arguments of :class:`~tlresearch.data.datamodule.ImageClassificationDataModule`.
    """

    name = "folder"

    def _read_classes(self) -> list[str]:
        self.layout, classes, self._present = self._read_layout()
        self._class_set = frozenset(classes)
        return classes

    def _read_layout(self) -> tuple[str, list[str], frozenset[str]]:
        root = self.root
        if not root.is_dir():
            raise ConfigError(
                f"data.root={str(root)!r}: no such directory. Point data.root at an image folder: "
                "root/<class>/*.jpg, or root/train/<class>/*.jpg with optional root/val/ and root/test/."
            )
        top = _subdirs(root)
        if "train" in top:
            classes = _subdirs(root / "train")
            present = frozenset(s for s in ("val", "test") if s in top)
            for split in sorted(present):
                extra = sorted(set(_subdirs(root / split)) - set(classes))
                if extra:
                    raise ConfigError(
                        f"data.root={str(root)!r}: {split}/ has class folder(s) {', '.join(extra)} that train/ lacks; "
                        "every val/test class must also be a train class (labels come from train/)."
                    )
            layout, where = "split", root / "train"
        else:
            if any(s in top for s in ("val", "test")):
                raise ConfigError(
                    f"data.root={str(root)!r}: has {'/'.join(s for s in ('val', 'test') if s in top)}/ but no train/. "
                    "Add root/train/<class>/ (or, for a flat layout, rename those folders: they would be taken as classes)."
                )
            classes, present, layout, where = top, frozenset(), "flat", root
        if len(classes) < 2:
            found = f"only {classes[0]!r}" if classes else "none"
            raise ConfigError(
                f"data.root={str(root)!r}: found {len(classes)} class folder(s) under {where} ({found}); a classifier needs at "
                "least 2. Lay the images out as <root>/<class>/*.jpg (or <root>/train/<class>/*.jpg), one folder per class."
            )
        return layout, classes, present

    def _scan_root(self) -> Path:
        return self.root

    def _splits_on_disk(self) -> frozenset[str]:
        return self._present

    def _scan_key_extra(self) -> dict[str, Any]:
        return {**super()._scan_key_extra(), "layout": self.layout}

    def _locate(self, rel: PurePosixPath) -> tuple[str | None, str] | None:
        parts = rel.parts
        if self.layout == "split":
            if len(parts) >= 3 and parts[0] in SPLIT_DIRS and parts[1] in self._class_set:
                return parts[0], parts[1]
            return None
        if len(parts) >= 2 and parts[0] in self._class_set:
            return None, parts[0]
        return None

    def _describe_config(self) -> dict[str, Any]:
        return {"layout": self.layout, "splits_on_disk": sorted(self._present), **super()._describe_config()}
