"""Images stored in array files (CIFAR's pickled batches, SVHN's ``.mat``, PatchCamelyon's ``.h5``).

Such an image has no file of its own; it is named ``<array file>#<index>`` (the image at
``index``, from 0, in that file: ``cifar-10-batches-py/test_batch#17``). The name plays the part
of an image file's path everywhere: it is a sample's ``path`` (absolute) and ``rel`` (relative
to ``data.root``: what predictions.csv and the manifest hashes record), the data layer's
:func:`~tlresearch.data.images.load_rgb` reads it (so do the datasets, the visualizer's source
images and the W&B thumbnails), and :func:`sample_file` gives the file whose size and mtime
fingerprint it (the feature cache's key changes when an array file is replaced).

The format is told by the file's name: ``.h5``/``.hdf5`` (dataset ``x``, ``[N, H, W, 3]``, read
one image at a time, as torchvision does), ``.mat`` (``X``, ``[H, W, 3, N]``), anything else a
pickled dict whose ``data`` is ``[N, 3 * H * W]`` (CIFAR). The decoded arrays of the last two are
kept per process, keyed by the file's size and mtime, so a replaced file is read again.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io
from PIL import Image

#: Between an array file's path and the index of an image in it.
SEPARATOR = "#"
_H5_SUFFIXES = (".h5", ".hdf5")


def item_id(file: str | os.PathLike, index: int) -> str:
    """The name of the image at ``index`` of the array file ``file``: ``<file>#<index>``."""
    return f"{os.fspath(file)}{SEPARATOR}{int(index)}"


def split_item(path: str | os.PathLike) -> tuple[str, int] | None:
    """``(array file, index)`` when ``path`` names an image inside an array file, else ``None``
    (an image file, even one whose name ends in ``#<digits>``, is its own file)."""
    text = os.fspath(path)
    head, sep, tail = text.rpartition(SEPARATOR)
    if not sep or not head or not (tail.isascii() and tail.isdigit()) or os.path.isfile(text):
        return None
    return head, int(tail)


def sample_file(path: str | os.PathLike) -> str:
    """The file that holds the image ``path`` names: its array file, or the image file itself."""
    item = split_item(path)
    return item[0] if item is not None else os.fspath(path)


def image_stem(path: str | os.PathLike) -> str:
    """What names the image in file names: the image file's stem, or ``<array file stem>_<index>``."""
    item = split_item(path)
    return f"{Path(item[0]).stem}_{item[1]}" if item is not None else Path(path).stem


def stored_as_arrays(samples: Sequence[Any]) -> bool:
    """Whether ``samples`` (:class:`~tlresearch.data.images.Sample` s) are images inside array files."""
    return bool(samples) and split_item(samples[0].path) is not None


def count_items(file: str | os.PathLike) -> int:
    """How many images the array file holds."""
    file = os.fspath(file)
    if file.lower().endswith(_H5_SUFFIXES):
        with h5py.File(file, "r") as f:
            return len(f["x"])
    return len(_decoded_file(file))


def item_ids(file: str | os.PathLike) -> list[str]:
    """The names of every image of the array file, in its order."""
    return [item_id(file, i) for i in range(count_items(file))]


def load_item(file: str | os.PathLike, index: int) -> Image.Image:
    """The image at ``index`` of the array file, as 8-bit RGB (an ``IndexError`` past its end)."""
    file = os.fspath(file)
    if file.lower().endswith(_H5_SUFFIXES):
        with h5py.File(file, "r") as f:
            pixels = f["x"][index]
    else:
        pixels = _decoded_file(file)[index]
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).convert("RGB")


def _decoded_file(file: str) -> np.ndarray:
    st = os.stat(file)
    return _decoded(file, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)  # CIFAR-10: 6 files; keyed by size and mtime, so a replaced file is read again
def _decoded(file: str, size: int, mtime_ns: int) -> np.ndarray:
    """Every image of a ``.mat`` or pickled array file, ``[N, H, W, 3]`` (a view, no copy)."""
    del size, mtime_ns  # the cache key only
    if file.lower().endswith(".mat"):
        return np.moveaxis(scipy.io.loadmat(file)["X"], -1, 0)  # SVHN: [H, W, 3, N]
    with open(file, "rb") as fh:  # a file of the dataset the config names, as torchvision reads it
        entry = pickle.load(fh, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8)
    side = int(round((data.shape[1] // 3) ** 0.5))
    return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)  # CIFAR: rows of R, G, B planes
