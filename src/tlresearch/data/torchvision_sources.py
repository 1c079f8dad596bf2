"""Per-dataset facts of the transfer suites read through ``torchvision.datasets``.

A :class:`Source` names the torchvision class, how its constructor selects a split, the folder
its files live in (for messages), and how to read samples out of a constructed object:
:func:`read_items` gives ``(path, label)`` pairs where the path is an image file when
torchvision reads files (Food-101, DTD, Flowers, Aircraft, Cars, Caltech-101, SUN397, EuroSAT)
and ``<array file>#<index>`` when it reads arrays (CIFAR, SVHN, PCam: :mod:`tlresearch.data.arrays`). :func:`open_split` builds the real
torchvision object; ``verify_checksums=false`` skips the md5 check torchvision runs on CIFAR,
SVHN and Flowers (needed for generated copies, whose files cannot match the official sums).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import torchvision.datasets as tvd

from tlresearch.core.errors import ConfigError

from .arrays import item_ids


@dataclass(frozen=True)
class Source:
    """How one dataset is reached through torchvision."""

    cls: str  # class name in torchvision.datasets
    folder: str  # where its files are under data.root (for messages)
    how_to_get: str  # what to download by hand
    split_arg: str = "split"  # constructor keyword selecting the split ("train" for CIFAR: bool)
    arrays: bool = False  # images are stored in array files (named <file>#<index>), not one file each
    checksums: bool = False  # torchvision verifies md5 sums when loading
    extra: dict[str, Any] = field(default_factory=dict)  # fixed constructor arguments


SOURCES: dict[str, Source] = {
    "food101": Source("Food101", "food-101", "https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz (extract into data.root)"),
    "cifar10": Source("CIFAR10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "train", True, True),
    "cifar100": Source("CIFAR100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "train", True, True),
    "sun397": Source("SUN397", "SUN397", "vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz and Partitions.zip (into data.root/SUN397)",
                     ""),
    "stanford_cars": Source(
        "StanfordCars", "stanford_cars",
        "the Stanford Cars images and devkit (cars_train/, cars_test/, devkit/, cars_test_annos_withlabels.mat; torchvision's "
        "download is broken upstream: get them e.g. from Kaggle 'stanford-cars-dataset' and lay them out as torchvision documents)",
    ),
    "fgvc_aircraft": Source("FGVCAircraft", "fgvc-aircraft-2013b", "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"),
    "dtd": Source("DTD", "dtd/dtd", "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz (into data.root/dtd)"),
    "flowers102": Source(
        "Flowers102", "flowers-102", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, setid.mat)",
        checksums=True,
    ),
    "caltech101": Source("Caltech101", "caltech101/101_ObjectCategories", "https://data.caltech.edu/records/mzrjq-6wc02 (caltech-101.zip)",
                         ""),
    "eurosat": Source("EuroSAT", "eurosat/2750", "https://madm.dfki.de/files/sentinel/EuroSAT.zip (extract into data.root/eurosat)", ""),
    "svhn": Source("SVHN", "", "http://ufldl.stanford.edu/housenumbers/{train,test}_32x32.mat", arrays=True, checksums=True),
    "pcam": Source(
        "PCAM", "pcam", "the PatchCamelyon camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 files (github.com/basveeling/pcam)",
        arrays=True,
    ),
}


def _lenient(cls: type) -> type:
    """``cls`` with its md5 check reduced to 'the files exist' (generated copies)."""

    def exists(self: Any) -> bool:
        base = Path(self.root) / getattr(self, "base_folder", "")
        names = [n for n, _ in getattr(self, "train_list", []) + getattr(self, "test_list", [])]
        if hasattr(self, "filename") and not names:
            names = [self.filename]
        if hasattr(self, "_file_dict"):  # Flowers102
            return all((Path(self._base_folder) / f).exists() for f, _ in self._file_dict.values() if not f.endswith(".tgz"))
        return all((base / n).exists() for n in names)

    def load_meta(self: Any) -> None:  # CIFAR's, without the md5 check
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as fh:
            self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    methods: dict[str, Any] = {"_check_integrity": exists}
    if hasattr(cls, "_load_meta"):
        methods["_load_meta"] = load_meta
    return type(cls.__name__, (cls,), methods)


def open_split(name: str, root: Path, split: str, *, verify_checksums: bool, options: dict[str, Any]) -> Any:
    """The torchvision dataset object of ``split`` (``download=False``), or a ConfigError naming how to get the files."""
    source = SOURCES[name]
    cls = getattr(tvd, source.cls)
    if source.checksums and not verify_checksums:
        cls = _lenient(cls)
    kwargs: dict[str, Any] = {**source.extra, **options}
    if source.split_arg == "train":
        kwargs["train"] = split == "train"
    elif source.split_arg:
        kwargs["split"] = split
    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        raise ConfigError(missing_message(name, root, error)) from error


def missing_message(name: str, root: Path, error: object) -> str:
    source = SOURCES[name]
    where = root / source.folder if source.folder else root
    return (
        f"data.root={str(root)!r}: torchvision.datasets.{source.cls} cannot read {name} there ({error}); looked in {where}. "
        f"Set data.download=true to download it, download {source.how_to_get} by hand, or write a small synthetic copy with "
        f"`python -m tlresearch.data.generate {name} {root}` (then data.verify_checksums=false)."
    )


def read_items(name: str, dataset: Any) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(path, label), ...])`` of a torchvision dataset object, in its order."""
    if name in ("cifar10", "cifar100"):
        base = Path(dataset.root) / dataset.base_folder
        files = [base / file for file, _ in (dataset.train_list if dataset.train else dataset.test_list)]
        return list(dataset.classes), _array_items(files, dataset.targets)
    if name == "svhn":
        return [str(d) for d in range(10)], _array_items([Path(dataset.root) / dataset.filename], dataset.labels)
    if name == "pcam":
        files = dataset._FILES[dataset._split]
        with h5py.File(dataset._base_folder / files["targets"][0]) as f:
            labels = [int(v) for v in f["y"][:].reshape(-1)]
        return ["no_tumor", "tumor"], _array_items([dataset._base_folder / files["images"][0]], labels)
    if name == "caltech101":
        base = Path(dataset.root) / "101_ObjectCategories"
        items = [(str(base / dataset.categories[y] / f"image_{i:04d}.jpg"), int(y)) for i, y in zip(dataset.index, dataset.y)]
        return list(dataset.categories), items
    if name == "eurosat":
        return list(dataset.classes), [(os.fspath(p), int(t)) for p, t in dataset.samples]
    if name == "stanford_cars":
        return list(dataset.classes), [(os.fspath(p), int(t)) for p, t in dataset._samples]
    classes = list(getattr(dataset, "classes", [])) or [str(i) for i in range(max(dataset._labels) + 1)]
    return classes, [(os.fspath(p), int(t)) for p, t in zip(dataset._image_files, dataset._labels)]


def _array_items(files: list[Path], labels: Any) -> list[tuple[str, int]]:
    """``(<file>#<index>, label)`` of every image of ``files`` (torchvision's order: file by file)."""
    paths = [path for file in files for path in item_ids(file)]
    if len(paths) != len(labels):
        raise ConfigError(
            f"data.root: {', '.join(map(str, files))} hold {len(paths)} images but {len(labels)} labels: the files are damaged or "
            "of different copies; download them again (data.download=true)."
        )
    return [(path, int(label)) for path, label in zip(paths, labels)]
