"""Microsoft Cats vs Dogs (the Kaggle "Dogs vs. Cats" images): 2 classes, 12,500 images each.

The archive ``kagglecatsanddogs_5340.zip`` holds ``PetImages/Cat/*.jpg`` and
``PetImages/Dog/*.jpg`` (plus a licence PDF and a readme). A few of its files do not decode
(zero bytes), about 1,600 lack the JFIF header (the Keras tutorial drops those), and each class
folder has a ``Thumbs.db``: every file is checked once and the verdicts are kept in a manifest
(see :func:`~tlresearch.data.manifest.scan_images`). There is no official split: train/val/test
are drawn per class by ``val_fraction``/``test_fraction``, fixed by ``seed``.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from tlresearch.core.errors import ConfigError

from .download import download_file, safe_extract_zip
from .scanned import ScannedImageDataModule

log = logging.getLogger(__name__)

CATS_DOGS_URL = (
    "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)
CATS_DOGS_ARCHIVE = "kagglecatsanddogs_5340.zip"
CATS_DOGS_FOLDER = "PetImages"
CATS_DOGS_CLASSES: tuple[str, str] = ("Cat", "Dog")


class CatsDogsDataModule(ScannedImageDataModule):
    """Microsoft Cats vs Dogs, classes ``["Cat", "Dog"]``.

    Looks for ``root/PetImages``; else extracts ``root/kagglecatsanddogs_5340.zip`` (refusing
    members that would escape ``root``); else downloads the archive when ``download`` is on.

    Args:
        root: the folder holding (or to receive) ``PetImages/`` or the zip.
        filter: ``"decodes"`` (keep every image PIL fully decodes) or ``"jfif"`` (also require
            the JFIF marker, as the Keras tutorial does: ~1,600 fewer images).
        val_fraction, test_fraction: share of each class held out for val / test.
        cache_dir: where the manifest is written (``None`` = ``root/.tlresearch``).
        **common: the arguments of :class:`~tlresearch.data.datamodule.ImageClassificationDataModule`.
    """

    name = "cats_dogs"
    _rel_prefix = f"{CATS_DOGS_FOLDER}/"

    def _read_classes(self) -> list[str]:
        return list(CATS_DOGS_CLASSES)

    def _scan_root(self) -> Path:
        return self.root / CATS_DOGS_FOLDER

    def _locate(self, rel: PurePosixPath) -> tuple[str | None, str] | None:
        if len(rel.parts) >= 2 and rel.parts[0] in CATS_DOGS_CLASSES:
            return None, rel.parts[0]
        return None

    def _ensure_data(self, *, allow_download: bool) -> None:
        folder, archive = self.root / CATS_DOGS_FOLDER, self.root / CATS_DOGS_ARCHIVE
        if folder.is_dir():
            return
        if not archive.is_file():
            if not allow_download:
                raise ConfigError(
                    f"data.root={str(self.root)!r}: Cats vs Dogs not found: looked for {folder} and {archive}, and "
                    f"data.download=false. Set data.download=true to download it, or download {CATS_DOGS_URL} into {self.root}."
                )
            log.info("Downloading Cats vs Dogs (~790 MB) into %s...", self.root)
            download_file(CATS_DOGS_URL, self.root, CATS_DOGS_ARCHIVE, what="Microsoft Cats vs Dogs")
        safe_extract_zip(archive, self.root, commit_last=CATS_DOGS_FOLDER)
        if not folder.is_dir():
            raise ConfigError(
                f"data.root={str(self.root)!r}: {archive} has no {CATS_DOGS_FOLDER}/ folder; it is not the Cats vs Dogs archive. "
                "Delete it and download it again."
            )
