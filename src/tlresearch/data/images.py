"""Images: the labelled sample, robust decoding, the file checks, and the dataset over image files.

* :class:`Sample`: one labelled image, as every split, manifest hash and dataset records it;
* decoding (:func:`load_rgb`, :func:`to_rgb`): every mode to 8-bit RGB, decompression bombs
  refused, bad files raised rather than half-decoded; an image inside an array file
  (``<file>#<index>``, :mod:`tlresearch.data.arrays`) is read from its array;
* file checks (:func:`check_image`, :func:`has_jfif_header`): why a file must be dropped, as a
  reason string (:func:`reason_category` groups the reasons);
* :func:`verify_samples`: decode a split's files once, keep those that decode (the test split);
* :class:`ImageListDataset`: ``(image, label)`` for a list of samples; a file that went bad after
  it was checked is replaced by another of its class and counted (train, val), or stops the
  test (a verified test split is never changed silently).
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .arrays import load_item, split_item

log = logging.getLogger(__name__)

#: File suffixes treated as images; anything else is dropped as "not an image" without opening it.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
#: ``decodes``: PIL fully decodes the file. ``jfif``: additionally the JFIF marker is in its first 10 bytes.
IMAGE_FILTERS = ("decodes", "jfif")


class Sample(NamedTuple):
    """One labelled image."""

    path: str  # absolute path, opened by the dataset (an image in an array file: <file>#<index>, data/arrays.py)
    rel: str  # '/'-separated path relative to the dataset root: what manifests, hashes and predictions.csv record
    label: int
    group: str  # stratification key: the class name (pets' species target stratifies by breed)


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
    """Fully decode the image at ``path`` into RGB: an image file, or an image inside an array
    file (``<file>#<index>``, :func:`~tlresearch.data.arrays.load_item`).

    Raises whatever PIL raises for a bad file. An image over ``PIL.Image.MAX_IMAGE_PIXELS``
    (a possible decompression bomb) raises ``DecompressionBombError`` before it is decoded,
    where PIL itself would only warn (it refuses only at twice the limit).
    """
    item = split_item(path)
    if item is not None:
        return load_item(*item)
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
        return f"undecodable: {error_text(error)}"
    if image_filter == "jfif" and not has_jfif_header(path):
        return "no JFIF header"
    return None


def error_text(error: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, for reasons and messages that say what went wrong with a file."""
    text = str(error).strip() or "empty error message"
    return f"{type(error).__name__}: {text}"


def reason_category(reason: str) -> str:
    """The part of a drop reason before its first colon ("undecodable: ..." -> "undecodable")."""
    return reason.split(":", 1)[0]


def as_image_list(images: Sequence[Sample] | ImageListDataset) -> ImageListDataset:
    """A reader of ``images`` without transform: a split's dataset keeps its policy and failure
    record (:meth:`ImageListDataset.untransformed`); a plain list of samples gets the replacing one."""
    return images.untransformed() if isinstance(images, ImageListDataset) else ImageListDataset(images)


class UnreadableImageError(RuntimeError):
    """An image of a split that is never changed silently (the test split) failed to load."""


def verify_samples(samples: Sequence[Sample], threads: int = 1) -> tuple[list[Sample], list[tuple[str, str]]]:
    """``(samples that fully decode, [(relative path, reason) of those that do not])``, in order.

    Each file is decoded once by :func:`check_image` (the scanner's verdict), in ``threads``
    threads (PIL releases the GIL while decoding).
    """
    samples = list(samples)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        reasons = list(pool.map(lambda sample: check_image(sample.path), samples))
    kept = [sample for sample, reason in zip(samples, reasons) if reason is None]
    failed = [(sample.rel, reason) for sample, reason in zip(samples, reasons) if reason is not None]
    return kept, failed


class ImageListDataset(Dataset):
    """``(image_tensor, label)`` for a list of :class:`Sample`.

    What happens to a file that fails to load at read time (deleted, corrupted after it was
    checked) is the dataset's policy:

    * ``replace_unreadable=True`` (train, val): the epoch goes on. The file is logged once and
      replaced by the next readable image *of the same class*, so batch shapes hold and no
      image carries a wrong label; the replacement is counted (:attr:`num_unreadable`).
    * ``replace_unreadable=False`` (test): :class:`UnreadableImageError` names the file. The
      test split is never changed silently: the DataModule verifies its files when it builds
      the split (:func:`verify_samples`), excludes and records the failures there, and a file
      that breaks after that stops the test rather than being swapped for another image.

    :attr:`failures` holds one flag per sample in shared memory: DataLoader worker processes
    (fork or spawn) set it, the main process counts it. :meth:`untransformed` views share it.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        replace_unreadable: bool = True,
        failures: torch.Tensor | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.replace_unreadable = replace_unreadable
        self.failures = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_() if failures is None else failures
        self._by_label: dict[int, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """Every sample's label, in order (as torchvision datasets expose it)."""
        return [s.label for s in self.samples]

    @property
    def num_unreadable(self) -> int:
        """How many distinct files failed to load so far, in any process (each replaced, or raised)."""
        return int(self.failures.sum())

    def untransformed(self) -> ImageListDataset:
        """The same images as PIL RGB, under the same policy and failure record: for readers with
        a transform of their own (feature extraction, the in-memory copy, the device decoder)."""
        return ImageListDataset(self.samples, replace_unreadable=self.replace_unreadable, failures=self.failures)

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
        if self.failures[index]:
            return None
        try:
            return load_rgb(self.samples[index].path)
        except Exception as error:
            self.failures[index] = 1
            path = self.samples[index].path
            if not self.replace_unreadable:
                raise UnreadableImageError(
                    f"Test image {path} could not be read at test time ({error_text(error)}), although it decoded when the split "
                    "was built; it changed on disk during the run. The test set is never changed silently: restore the file and "
                    "evaluate the checkpoint (python -m tlresearch.evaluate), or run again (it is then excluded and counted)."
                ) from error
            log.warning("Could not read %s (%s); using another image of the same class instead.", path, error_text(error))
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
