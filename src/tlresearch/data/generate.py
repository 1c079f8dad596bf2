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
      common: [--min-size PX] [--max-size PX] [--seed S]
"""

from __future__ import annotations

import argparse
import colorsys
import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .cats_dogs import CATS_DOGS_ARCHIVE, CATS_DOGS_CLASSES, CATS_DOGS_FOLDER
from .pets import PET_BREED_IDS, PET_BREED_SPECIES

_GOLDEN = 0.6180339887498949  # spreads class hues evenly around the colour wheel


@dataclass
class Generated:
    """What a generator wrote."""

    root: Path
    dataset: str
    classes: list[str]
    counts: dict[str, int]  # images per split (or "images" when there is no split)
    planted: dict[str, str] = field(default_factory=dict)  # relative path -> kind of bad file
    hint: str = ""  # how to load it

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        planted = f"; planted bad files: {', '.join(f'{p} ({k})' for p, k in self.planted.items())}" if self.planted else ""
        return f"Wrote {self.dataset} ({len(self.classes)} classes: {counts}) to {self.root}{planted}.\n{self.hint}"


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0.0), 1.0), min(max(value, 0.0), 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def render_image(rng: np.random.Generator, class_index: int, coarse_index: int, size: tuple[int, int]) -> Image.Image:
    """A ``size`` (width, height) RGB image of class ``class_index`` in coarse group ``coarse_index``.

    Class signal: foreground hue, shape (ellipse/square/triangle) and stripe frequency and
    orientation. Coarse signal: background hue. Nuisance: position, size, rotation jitter,
    lighting gradient, distractor blobs and pixel noise.
    """
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    bg_hue = 0.58 + coarse_index * _GOLDEN  # group 0 bluish, 1 yellow-orange, then spread around the wheel
    background = _rgb(bg_hue + rng.normal(0, 0.02), 0.35 + rng.uniform(-0.1, 0.1), 0.55 + rng.uniform(-0.1, 0.1))
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(theta) + yy * math.sin(theta)) / max(width, height)
    image = background * (0.75 + 0.5 * (ramp - ramp.min()))[..., None]

    for _ in range(int(rng.integers(1, 4))):  # distractors: small blobs of any colour
        r = rng.uniform(0.05, 0.12) * min(width, height)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        image[blob] = _rgb(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9))

    radius = rng.uniform(0.22, 0.38) * min(width, height)
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    angle = math.pi * ((class_index * 0.381966) % 1.0) + rng.normal(0, 0.15)
    u = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / radius
    v = (-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)) / radius
    kind = class_index % 3
    if kind == 0:
        shape = u**2 + v**2 <= 1.0
    elif kind == 1:
        shape = np.maximum(np.abs(u), np.abs(v)) <= 0.8
    else:
        shape = (v >= -1.0) & (v <= 0.8) & (np.abs(u) <= (v + 1.0) * 0.5)  # apex up, base down
    frequency = 1.5 + (class_index // 3) % 4
    stripes = np.sin(math.pi * frequency * u + rng.uniform(0, 2 * math.pi)) > 0
    foreground = _rgb(class_index * _GOLDEN + rng.normal(0, 0.015), 0.85, 0.95)
    image[shape & stripes] = foreground
    image[shape & ~stripes] = foreground * 0.45

    image = image + rng.normal(0, 10, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _random_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    return int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1))


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
            render_image(rng, class_index, species, _random_size(rng, min_size, max_size)).save(images / f"{image_id}.jpg", quality=90)
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
                image = render_image(rng, class_index, class_index, _random_size(rng, min_size, max_size))
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
            render_image(rng, class_index, class_index, _random_size(rng, min_size, max_size)).save(folder / f"{number}.jpg", quality=90)
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
    parser.add_argument("dataset", choices=("pets", "cats_dogs", "folder"), help="which on-disk format to write")
    parser.add_argument("dir", type=Path, help="output folder (what data.root will point at)")
    parser.add_argument("--images-per-class", type=int, default=10, help="images per class (default 10)")
    parser.add_argument("--num-classes", type=int, default=None, help="pets: first K breeds (default 37); folder: classes (default 3)")
    parser.add_argument("--layout", choices=("split", "flat"), default="split", help="folder only: train/val/test folders or one folder per class")
    parser.add_argument("--min-size", type=int, default=64, help="smallest image side in pixels (default 64)")
    parser.add_argument("--max-size", type=int, default=128, help="largest image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    common = {"images_per_class": args.images_per_class, "min_size": args.min_size, "max_size": args.max_size, "seed": args.seed}
    try:
        if args.dataset == "pets":
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
