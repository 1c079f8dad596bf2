"""Small synthetic datasets in the exact on-disk formats of the real ones.

The loading code runs on them unchanged (Oxford-IIIT Pet even loads through torchvision's
``OxfordIIITPet(download=False)``), so tests and demos exercise the real paths without a
download. Images are real JPEGs whose content carries a learnable class signal: every class
has its own foreground colour, shape and stripe frequency, drawn at a random position and size
over a noisy background, and classes of one coarse group (pets: species) share a background
tint. A small CNN separates the classes within a few epochs; nothing is a fixed pixel pattern.

Command line::

    python -m tlresearch.data.generate pets DIR [--num-classes K] [--images-per-class N]
    python -m tlresearch.data.generate cats_dogs DIR [--images-per-class N]
    python -m tlresearch.data.generate folder DIR [--num-classes K] [--layout split|flat]
    python -m tlresearch.data.generate {cifar10,cifar100,svhn,pcam,food101,dtd,flowers102,fgvc_aircraft,
                                        stanford_cars,caltech101,eurosat,sun397} DIR [--num-classes K]
      common: [--min-size PX] [--max-size PX] [--seed S]
"""

from __future__ import annotations

import argparse
import io
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .cats_dogs import CATS_DOGS_ARCHIVE, CATS_DOGS_CLASSES, CATS_DOGS_FOLDER
from .generate_torchvision import GENERATORS
from .pets import PET_BREED_IDS, PET_BREED_SPECIES
from .synthetic import Generated, random_size, render_image

# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}), **params)
    return buffer.getvalue()


def exif_only_jpeg(image: Image.Image) -> bytes:
    """A valid JPEG with an EXIF APP1 header and no JFIF APP0 one (as cameras write them).

    PIL always writes APP0/JFIF; the segment is cut out afterwards.
    """
    exif = Image.Exif()
    exif[0x010F] = "SyntheticCam"  # Make
    data = _encode(image, exif=exif.tobytes())
    assert data[2:4] == b"\xff\xe0", "PIL is expected to write the JFIF APP0 segment first"
    app0_length = int.from_bytes(data[4:6], "big")
    stripped = data[:2] + data[4 + app0_length :]
    assert b"JFIF" not in stripped[:10] and stripped[2:4] == b"\xff\xe1"
    return stripped


def _check_sizes(images_per_class: int, min_size: int, max_size: int, minimum_images: int = 2) -> None:
    if images_per_class < minimum_images:
        raise ValueError(f"images_per_class={images_per_class}: need at least {minimum_images}.")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"min_size={min_size}, max_size={max_size}: need 16 <= min_size <= max_size.")


# --------------------------------------------------------------------------------------------
# Oxford-IIIT Pet
# --------------------------------------------------------------------------------------------

_PETS_LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)


def generate_pets(
    root: str | Path,
    *,
    num_classes: int = len(PET_BREED_IDS),
    images_per_class: int = 10,
    min_size: int = 64,
    max_size: int = 128,
    seed: int = 0,
) -> Generated:
    """Write ``root/oxford-iiit-pet/`` for the first ``num_classes`` breeds, about half trainval, half test."""
    if not 1 <= num_classes <= len(PET_BREED_IDS):
        raise ValueError(f"num_classes={num_classes}: must be in 1..{len(PET_BREED_IDS)}.")
    _check_sizes(images_per_class, min_size, max_size)
    base = Path(root) / "oxford-iiit-pet"
    images, annotations = base / "images", base / "annotations"
    for folder in (images, annotations / "trimaps", annotations / "xmls"):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    within_species = [0, 0]
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for class_index, breed in enumerate(PET_BREED_IDS[:num_classes]):
        species = PET_BREED_SPECIES[class_index]
        within_species[species] += 1
        numbers = rng.permutation(np.arange(1, images_per_class + 1))
        in_trainval = set(numbers[: math.ceil(images_per_class / 2)].tolist())
        for number in range(1, images_per_class + 1):
            image_id = f"{breed}_{number}"
            render_image(rng, class_index, species, random_size(rng, min_size, max_size)).save(images / f"{image_id}.jpg", quality=90)
            split = "trainval" if number in in_trainval else "test"
            lines[split].append(f"{image_id} {class_index + 1} {species + 1} {within_species[species]}")
    for split in lines:  # ordered as in the real files: by class, then image id
        lines[split].sort(key=lambda line: (int(line.split()[1]), line.split()[0]))
        (annotations / f"{split}.txt").write_text("".join(line + "\n" for line in lines[split]))
    every = sorted(lines["trainval"] + lines["test"], key=lambda line: (int(line.split()[1]), line.split()[0]))
    (annotations / "list.txt").write_text(_PETS_LIST_HEADER + "".join(line + "\n" for line in every))
    return Generated(
        root=Path(root),
        dataset="Oxford-IIIT Pet (synthetic)",
        classes=list(PET_BREED_IDS[:num_classes]),
        counts={split: len(split_lines) for split, split_lines in lines.items()},
        hint=f"Load it with: data=pets data.root={root} data.download=false data.num_breeds={num_classes}",
    )


# --------------------------------------------------------------------------------------------
# Microsoft Cats vs Dogs
# --------------------------------------------------------------------------------------------


def _thumbs_db() -> bytes:
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)  # an OLE compound file header, like Windows writes


def _bad_files(rng: np.random.Generator, class_index: int, first_number: int, size: tuple[int, int]) -> dict[str, tuple[str, bytes]]:
    """Bad files as the real archive has them: name -> (kind, bytes)."""
    image = render_image(rng, class_index, class_index, size)
    files = {f"{first_number}.jpg": ("zero-byte", b"")}
    if class_index == 0:
        files[f"{first_number + 1}.jpg"] = ("png", _encode(image, "PNG"))
        files[f"{first_number + 2}.jpg"] = ("exif-only", exif_only_jpeg(image))
    else:
        files[f"{first_number + 1}.jpg"] = ("gif", _encode(image, "GIF"))
        jpeg = _encode(image)
        files[f"{first_number + 2}.jpg"] = ("truncated", jpeg[: len(jpeg) // 2])
    files["Thumbs.db"] = ("thumbs", _thumbs_db())
    return files


def generate_cats_dogs(
    root: str | Path,
    *,
    images_per_class: int = 10,
    min_size: int = 64,
    max_size: int = 128,
    seed: int = 0,
) -> Generated:
    """Write ``root/kagglecatsanddogs_5340.zip`` laid out like the real archive, bad files included.

    Besides ``images_per_class`` good JPEGs per class (``0.jpg``, ``1.jpg``, ...), each class
    folder gets a zero-byte ``.jpg`` and a ``Thumbs.db``; ``Cat`` a PNG and an EXIF-only JPEG
    named ``.jpg``, ``Dog`` a GIF and a truncated JPEG named ``.jpg``. ``Generated.planted``
    maps each bad file's path (``PetImages/Cat/10.jpg``) to its kind.
    """
    _check_sizes(images_per_class, min_size, max_size)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    planted: dict[str, str] = {}
    with zipfile.ZipFile(root / CATS_DOGS_ARCHIVE, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("CDLA-Permissive-2.0.pdf", b"%PDF-1.4\n% synthetic stand-in for the licence\n%%EOF\n")
        zf.writestr("readme[1].txt", "Synthetic stand-in for the Microsoft Cats vs Dogs dataset.\n")
        zf.writestr(f"{CATS_DOGS_FOLDER}/", b"")
        for class_index, name in enumerate(CATS_DOGS_CLASSES):
            folder = f"{CATS_DOGS_FOLDER}/{name}"
            zf.writestr(f"{folder}/", b"")
            for number in range(images_per_class):
                image = render_image(rng, class_index, class_index, random_size(rng, min_size, max_size))
                zf.writestr(f"{folder}/{number}.jpg", _encode(image))
            for filename, (kind, data) in _bad_files(rng, class_index, images_per_class, (min_size, min_size)).items():
                zf.writestr(f"{folder}/{filename}", data)
                planted[f"{folder}/{filename}"] = kind
    return Generated(
        root=root,
        dataset="Microsoft Cats vs Dogs (synthetic)",
        classes=list(CATS_DOGS_CLASSES),
        counts={"images": 2 * images_per_class, "bad files": len(planted)},
        planted=planted,
        hint=f"Load it with: data=cats_dogs data.root={root} data.download=false",
    )


# --------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------


def generate_folder(
    root: str | Path,
    *,
    classes: int | Sequence[str] = 3,
    images_per_class: int = 10,
    layout: str = "split",
    splits: Sequence[str] = ("train", "val", "test"),
    min_size: int = 64,
    max_size: int = 128,
    seed: int = 0,
) -> Generated:
    """Write an image-folder dataset: ``root/<split>/<class>/<n>.jpg`` (``layout="split"``) or ``root/<class>/<n>.jpg``.

    In the split layout, each class's images go ~60/20/20 to train/val/test, restricted to
    ``splits`` (train always gets the rest).
    """
    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    if layout not in ("split", "flat"):
        raise ValueError(f"layout={layout!r}: must be 'split' or 'flat'.")
    if layout == "split" and "train" not in splits:
        raise ValueError(f"splits={list(splits)}: the split layout needs 'train'.")
    held_out = [s for s in ("val", "test") if s in splits] if layout == "split" else []
    _check_sizes(images_per_class, min_size, max_size, minimum_images=1 + len(held_out))
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for class_index, name in enumerate(names):
        n_held = max(1, round(images_per_class * 0.2)) if held_out else 0
        assignment = [s for s in held_out for _ in range(n_held)]
        assignment += ["train"] * (images_per_class - len(assignment))
        for number, split in enumerate(assignment):
            folder = root / split / name if layout == "split" else root / name
            folder.mkdir(parents=True, exist_ok=True)
            render_image(rng, class_index, class_index, random_size(rng, min_size, max_size)).save(folder / f"{number}.jpg", quality=90)
            key = split if layout == "split" else "images"
            counts[key] = counts.get(key, 0) + 1
    return Generated(
        root=root,
        dataset=f"image folder ({layout} layout, synthetic)",
        classes=names,
        counts=counts,
        hint=f"Load it with: data=folder data.root={root}",
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tlresearch.data.generate``."""
    parser = argparse.ArgumentParser(prog="python -m tlresearch.data.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("pets", "cats_dogs", "folder", *GENERATORS), help="which on-disk format to write")
    parser.add_argument("dir", type=Path, help="output folder (what data.root will point at)")
    parser.add_argument("--images-per-class", type=int, default=10, help="images per class (default 10)")
    parser.add_argument("--num-classes", type=int, default=None, help="pets: first K breeds (default 37); folder: classes (default 3)")
    parser.add_argument("--layout", choices=("split", "flat"), default="split", help="folder: split folders or one per class")
    parser.add_argument("--min-size", type=int, default=64, help="smallest image side in pixels (default 64)")
    parser.add_argument("--max-size", type=int, default=128, help="largest image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    common = {"images_per_class": args.images_per_class, "min_size": args.min_size, "max_size": args.max_size, "seed": args.seed}
    try:
        if args.dataset in GENERATORS:  # the torchvision datasets' formats (data/generate_torchvision.py)
            result = GENERATORS[args.dataset](args.dir, args.num_classes or 3, args.images_per_class, args.seed)
        elif args.dataset == "pets":
            result = generate_pets(args.dir, num_classes=args.num_classes or len(PET_BREED_IDS), **common)
        elif args.dataset == "cats_dogs":
            if args.num_classes not in (None, 2):
                parser.error("--num-classes: Cats vs Dogs always has 2 classes")
            result = generate_cats_dogs(args.dir, **common)
        else:
            result = generate_folder(args.dir, classes=args.num_classes or 3, layout=args.layout, **common)
    except ValueError as error:
        parser.error(str(error))
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
