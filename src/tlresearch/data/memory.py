"""``data.in_memory=true``: hold a small dataset in RAM, decoded once at a fixed size.

Every image is decoded once (in threads: PIL releases the GIL while decoding) and resized so
its short side is the backbone's evaluation resize (``preprocessing.resize_size``, 256 px for
a 224 px crop), with the very resize the evaluation transform applies, and kept as a uint8
array. The DataModule's transforms then run on these arrays instead of on files: no file
reads, no JPEG decoding, and smaller images to crop.

* Evaluation batches are identical to the file pipeline's (resizing an image to the size it
  already has is the identity, so resize + centre crop give the same pixels).
* Training crops (RandomResizedCrop) are taken from the resized image rather than the original:
  a crop is upsampled from fewer pixels, as in FFCV's ``max_resolution``. Use it for speed on
  small datasets, knowing the augmentation is slightly blurrier for small crop scales.

Memory: about ``N x resize_size^2 x 1.33 x 3`` bytes (Oxford-IIIT Pet at 256 px: ~2 GB).
Worker processes share the arrays copy-on-write (they are never written).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tlresearch.data.images import ImageListDataset

log = logging.getLogger(__name__)


def resize_short_side(image: Image.Image, size: int, interpolation: InterpolationMode) -> Image.Image:
    """The evaluation transform's resize (torchvision's, antialiased), so evaluation is unchanged."""
    return TF.resize(image, [size], interpolation=interpolation, antialias=True)


class InMemoryImages(Dataset):
    """``(transform(image), label)`` like :class:`ImageListDataset`, from images decoded into RAM.

    ``transform`` is read from the wrapped dataset at every access, so
    :meth:`ImageClassificationDataModule.set_preprocessing` keeps working.
    """

    def __init__(self, images: ImageListDataset, short_side: int, interpolation: InterpolationMode, threads: int = 1) -> None:
        self.images = images
        self.short_side = short_side
        raw = images.untransformed()  # the split's loader and policy (bad train/val files replaced and counted), without transform
        started = time.perf_counter()

        def decode(index: int) -> np.ndarray:
            image, _ = raw[index]
            return np.asarray(resize_short_side(image, short_side, interpolation))

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            self.arrays: list[np.ndarray] = list(pool.map(decode, range(len(raw))))
        megabytes = sum(a.nbytes for a in self.arrays) / 2**20
        log.info("Holding %d images in memory at short side %d px: %.0f MB, decoded in %.1f s.",
                 len(self.arrays), short_side, megabytes, time.perf_counter() - started)

    @property
    def samples(self) -> list:
        return self.images.samples

    @property
    def targets(self) -> list[int]:
        return self.images.targets

    @property
    def transform(self) -> Any:
        return self.images.transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.arrays[index])
        transform = self.images.transform
        return (transform(image) if transform is not None else image), self.images.samples[index].label


def hold_in_memory(held: dict[str, InMemoryImages], split: str, images: ImageListDataset, short_side: int,
                   interpolation: InterpolationMode, threads: int) -> InMemoryImages:
    """``held[split]``, decoded now unless it already holds ``images`` at ``short_side``."""
    current = held.get(split)
    if current is None or current.images is not images or current.short_side != short_side:
        held[split] = InMemoryImages(images, short_side, interpolation, threads=max(1, threads or torch.get_num_threads()))
    return held[split]
