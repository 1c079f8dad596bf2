"""Small synthetic copies of the torchvision datasets, in each one's exact on-disk format.

Each generator writes what the torchvision class reads with ``download=False`` (its files,
names and metadata as torchvision's source parses them), with a few classes and images whose
content carries a class signal (:func:`~tlresearch.data.synthetic.render_image`). CIFAR, SVHN
and Flowers copies cannot match the official md5 sums torchvision checks: load them with
``data.verify_checksums=false``. ``python -m tlresearch.data.generate <dataset> DIR`` calls them.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from .synthetic import Generated, random_size, render_image

#: Images of a split: (class index, PIL image) pairs.
_Split = list[tuple[int, Image.Image]]


def _images(rng: np.random.Generator, classes: int, per_class: int, size: tuple[int, int] | None, lo: int = 32, hi: int = 48) -> _Split:
    return [(c, render_image(rng, c, c, size or random_size(rng, lo, hi))) for c in range(classes) for _ in range(per_class)]


def _splits(seed: int, classes: int, per_class: dict[str, int], size: tuple[int, int] | None = None) -> dict[str, _Split]:
    rng = np.random.default_rng(seed)
    return {split: _images(rng, classes, n, size) for split, n in per_class.items()}


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def _result(root: Path, name: str, classes: list[str], splits: dict[str, _Split], extra: str = "") -> Generated:
    return Generated(root=root, dataset=f"{name} (synthetic)", classes=classes, counts={k: len(v) for k, v in splits.items()},
                     hint=f"Load it with: data={name} data.root={root} data.download=false{extra}")


def _listed(splits: dict[str, _Split], images: Path, rel: Callable[[int, int], str], listing: Callable[[str], Path]) -> None:
    """Save each split's images at ``images / rel(class, n)`` (n counting over all splits) and list
    those ``rel`` lines, one per image, in ``listing(split)``."""
    number = 0
    for split, items in splits.items():
        lines = []
        for c, image in items:
            number += 1
            lines.append(rel(c, number))
            _save(image, images / lines[-1].lstrip("/"))
        listing(split).parent.mkdir(parents=True, exist_ok=True)
        listing(split).write_text("\n".join(lines) + "\n")


def _names(prefix: str, classes: int) -> list[str]:
    return [f"{prefix}_{i:02d}" for i in range(classes)]


def cifar(root: Path, classes: int, per_class: int, seed: int, *, hundred: bool = False) -> Generated:
    """``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` or ``cifar-100-python/{train, test, meta}``."""
    splits = _splits(seed, classes, {"train": per_class, "test": max(2, per_class // 2)}, (32, 32))
    names = _names("class", classes)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    key = "fine_labels" if hundred else "labels"

    def batch(items: _Split) -> dict:
        data = np.stack([np.asarray(im).transpose(2, 0, 1).reshape(-1) for _, im in items]).astype(np.uint8)
        return {"data": data, key: [c for c, _ in items]}

    train = splits["train"]
    files = {"train": batch(train), "test": batch(splits["test"])} if hundred else {
        **{f"data_batch_{i + 1}": batch(train[i::5]) for i in range(5)}, "test_batch": batch(splits["test"])}
    files["meta" if hundred else "batches.meta"] = {"fine_label_names" if hundred else "label_names": names}
    for name, content in files.items():
        with open(folder / name, "wb") as fh:
            pickle.dump(content, fh)
    return _result(root, "cifar100" if hundred else "cifar10", names, splits, " data.verify_checksums=false")


def svhn(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``{train,test}_32x32.mat``: X of shape (32, 32, 3, N), y of shape (N, 1) with 10 for digit 0."""
    del classes  # torchvision's SVHN always has the 10 digits
    splits = _splits(seed, 10, {"train": per_class, "test": max(2, per_class // 2)}, (32, 32))
    root.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        x = np.stack([np.asarray(im) for _, im in items], axis=-1).astype(np.uint8)
        y = np.array([[10 if c == 0 else c] for c, _ in items], dtype=np.uint8)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return _result(root, "svhn", [str(d) for d in range(10)], splits, " data.verify_checksums=false")


def pcam(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``: x (N, 96, 96, 3) uint8, y (N, 1, 1, 1)."""
    del classes  # tumour or not
    splits = _splits(seed, 2, {"train": per_class, "valid": max(2, per_class // 2), "test": max(2, per_class // 2)}, (32, 32))
    folder = root / "pcam"
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f["x"] = np.stack([np.asarray(im) for _, im in items]).astype(np.uint8)
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f["y"] = np.array([c for c, _ in items], dtype=np.uint8).reshape(-1, 1, 1, 1)
    return _result(root, "pcam", ["no_tumor", "tumor"], splits)


def food101(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``food-101/images/<class>/<id>.jpg`` and ``food-101/meta/{train,test}.json`` ({class: ["class/id", ...]})."""
    splits = _splits(seed, classes, {"train": per_class, "test": max(2, per_class // 2)})
    names, base = _names("dish", classes), root / "food-101"
    number = 0
    for split, items in splits.items():
        meta: dict[str, list[str]] = {n: [] for n in names}
        for c, image in items:
            number += 1
            _save(image, base / "images" / names[c] / f"{number}.jpg")
            meta[names[c]].append(f"{names[c]}/{number}")
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
    return _result(root, "food101", names, splits)


def dtd(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``dtd/dtd/images/<class>/<class>_NNNN.jpg`` and ``dtd/dtd/labels/{train,val,test}1.txt``."""
    splits = _splits(seed, classes, {"train": per_class, "val": max(2, per_class // 2), "test": max(2, per_class // 2)})
    names, base = _names("texture", classes), root / "dtd" / "dtd"
    _listed(splits, base / "images", lambda c, n: f"{names[c]}/{names[c]}_{n:04d}.jpg", lambda split: base / "labels" / f"{split}1.txt")
    return _result(root, "dtd", names, splits)


def flowers102(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``flowers-102/jpg/image_NNNNN.jpg``, ``imagelabels.mat`` (labels 1..K) and ``setid.mat`` (trnid, valid, tstid)."""
    splits = _splits(seed, classes, {"trnid": per_class, "valid": max(2, per_class // 2), "tstid": max(2, per_class // 2)})
    base = root / "flowers-102"
    labels, ids, number = [], {}, 0
    for split, items in splits.items():
        ids[split] = []
        for c, image in items:
            number += 1
            _save(image, base / "jpg" / f"image_{number:05d}.jpg")
            labels.append(c + 1)
            ids[split].append(number)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    scipy.io.savemat(base / "setid.mat", {k: np.array([v]) for k, v in ids.items()})
    return _result(root, "flowers102", [str(i) for i in range(classes)], splits, " data.verify_checksums=false")


def fgvc_aircraft(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``fgvc-aircraft-2013b/data/{variants,families,manufacturers}.txt``, ``images_<level>_<split>.txt``, ``images/*.jpg``."""
    counts = {"train": per_class, "val": max(2, per_class // 2), "test": max(2, per_class // 2)}
    splits = _splits(seed, classes, counts)
    names, data = [f"A{300 + 10 * i}-{i}00" for i in range(classes)], root / "fgvc-aircraft-2013b" / "data"
    number = 1000000
    lines: dict[str, list[str]] = {}
    for split, items in splits.items():
        lines[split] = []
        for c, image in items:
            number += 1
            _save(image, data / "images" / f"{number}.jpg")
            lines[split].append(f"{number} {names[c]}")
    lines["trainval"] = lines["train"] + lines["val"]
    for level in ("variant", "family", "manufacturer"):
        plural = {"variant": "variants", "family": "families", "manufacturer": "manufacturers"}[level]
        (data / f"{plural}.txt").write_text("\n".join(names) + "\n")  # one name per class at every level (synthetic)
        for split, split_lines in lines.items():
            (data / f"images_{level}_{split}.txt").write_text("\n".join(split_lines) + "\n")
    return _result(root, "fgvc_aircraft", names, splits)


def stanford_cars(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``stanford_cars/{cars_train,cars_test}/*.jpg``, ``devkit/{cars_meta,cars_train_annos}.mat``, ``cars_test_annos_withlabels.mat``."""
    splits = _splits(seed, classes, {"train": per_class, "test": max(2, per_class // 2)})
    names, base = [f"Make{i} Model {2000 + i}" for i in range(classes)], root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        annotations = np.zeros((1, len(items)), dtype=[("fname", "O"), ("class", "O")])
        for n, (c, image) in enumerate(items):
            _save(image, base / f"cars_{split}" / f"{n + 1:05d}.jpg")
            annotations[0, n] = (f"{n + 1:05d}.jpg", np.uint8(c + 1))
        where = base / "devkit" / "cars_train_annos.mat" if split == "train" else base / "cars_test_annos_withlabels.mat"
        scipy.io.savemat(where, {"annotations": annotations})
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    return _result(root, "stanford_cars", names, splits)


def caltech101(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``caltech101/101_ObjectCategories/<class>/image_NNNN.jpg`` (plus BACKGROUND_Google, which torchvision skips)."""
    splits = _splits(seed, classes, {"images": per_class})
    names, base = _names("object", classes), root / "caltech101" / "101_ObjectCategories"
    numbers: dict[int, int] = {}
    for c, image in splits["images"]:
        numbers[c] = numbers.get(c, 0) + 1
        _save(image, base / names[c] / f"image_{numbers[c]:04d}.jpg")
    _save(splits["images"][0][1], base / "BACKGROUND_Google" / "image_0001.jpg")
    (root / "caltech101" / "Annotations").mkdir(exist_ok=True)
    return _result(root, "caltech101", names, splits, " data.train_per_class=2")


def eurosat(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``eurosat/2750/<Class>/<Class>_N.jpg`` (an ImageFolder)."""
    splits = _splits(seed, classes, {"images": per_class}, (64, 64))
    names = [f"Landuse{i}" for i in range(classes)]
    for n, (c, image) in enumerate(splits["images"]):
        _save(image, root / "eurosat" / "2750" / names[c] / f"{names[c]}_{n + 1}.jpg")
    return _result(root, "eurosat", names, splits)


def sun397(root: Path, classes: int, per_class: int, seed: int) -> Generated:
    """``SUN397/ClassName.txt`` (``/a/abbey`` lines), ``SUN397/<l>/<class>/sun_*.jpg``, ``SUN397/Partitions/*_01.txt``."""
    splits = _splits(seed, classes, {"Training": per_class, "Testing": max(2, per_class // 2)})
    names, base = _names("scene", classes), root / "SUN397"
    _listed(splits, base, lambda c, n: f"/{names[c][0]}/{names[c]}/sun_{n:06d}.jpg", lambda split: base / "Partitions" / f"{split}_01.txt")
    (base / "ClassName.txt").write_text("".join(f"/{n[0]}/{n}\n" for n in names))
    return _result(root, "sun397", names, splits)


#: name -> generator(root, classes, images per class, seed); the classes of svhn are digits 0..9, of pcam 2.
GENERATORS: dict[str, Callable[[Path, int, int, int], Generated]] = {
    "cifar10": cifar, "cifar100": lambda r, c, n, s: cifar(r, c, n, s, hundred=True), "svhn": svhn, "pcam": pcam,
    "food101": food101, "dtd": dtd, "flowers102": flowers102, "fgvc_aircraft": fgvc_aircraft, "stanford_cars": stanford_cars,
    "caltech101": caltech101, "eurosat": eurosat, "sun397": sun397,
}
