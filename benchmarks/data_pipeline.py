"""Data pipeline: images/s of the DataModule's training loader vs torchvision ImageFolder + DataLoader.

    python benchmarks/data_pipeline.py [--epochs 4] [--images-per-class 80] [--workers auto]

Both loaders read the same training images (an image folder generated in the real on-disk
format, photo-sized JPEGs), apply the same training transform (RandomResizedCrop 224 + flip +
normalisation, from ``tlresearch.data.transforms.train_transform`` with ResNet-50's
preprocessing), with the same batch size, worker count, pin_memory and persistent workers.
Epochs alternate between the two loaders; the first epoch of each (worker start-up) is not
counted. The DataModule additionally checks every file once (a cached manifest, built
before timing), seeds each image's augmentation and never crashes on a bad file; the plain
loader does none of that. Also shown: ``data.in_memory=true`` (decoded once into RAM).
Target: DataModule / plain >= 0.95.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from benchmarks._common import WORKSPACE, interleave, median, report
from tlresearch.data.folder import ImageFolderDataModule
from tlresearch.data.generate import generate_folder
from tlresearch.data.settings import resolve_num_workers, resolve_pin_memory
from tlresearch.data.transforms import Augmentation, Preprocessing, train_transform


def images_per_second(loader: DataLoader, epochs: int) -> list[float]:
    """Images/s of each epoch after the first (which starts the workers)."""
    rates = []
    for epoch in range(epochs):
        start, n = time.perf_counter(), 0
        for x, _ in loader:
            n += len(x)
        if epoch:
            rates.append(n / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is not counted)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="auto", help="DataLoader workers for both loaders ('auto' as data.num_workers)")
    args = parser.parse_args()

    root = WORKSPACE / "photos"
    generate_folder(root, classes=4, images_per_class=args.images_per_class, layout="split", splits=("train",),
                    min_size=300, max_size=500, seed=0)
    workers = resolve_num_workers(args.workers if args.workers == "auto" else int(args.workers))
    pin = resolve_pin_memory("auto")
    pre, aug = Preprocessing(), Augmentation()  # ResNet-50's 224 px preprocessing, default augmentation

    def datamodule(**kwargs) -> ImageFolderDataModule:
        dm = ImageFolderDataModule(root, cache_dir=WORKSPACE / "manifests", batch_size=args.batch_size, num_workers=workers,
                                   pin_memory=pin, preprocessing=pre, augment=vars(aug), val_fraction=0.0, test_fraction=0.0, **kwargs)
        dm.setup()  # the one-time scan of the files (manifest) happens here, not in the timing
        return dm

    ours = datamodule().train_dataloader()
    held = datamodule(in_memory=True).train_dataloader()  # decodes into RAM now, before timing
    plain = DataLoader(ImageFolder(root / "train", transform=train_transform(pre, aug)), batch_size=args.batch_size, shuffle=True,
                       num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    rates = interleave(
        {
            "datamodule": lambda: images_per_second(ours, args.epochs),
            "plain": lambda: images_per_second(plain, args.epochs),
            "in_memory": lambda: images_per_second(held, args.epochs),
        },
        args.rounds,
    )
    ours_r, plain_r, held_r = (median(rates[k]) for k in ("datamodule", "plain", "in_memory"))
    rows = [
        ("setup", f"{len(plain.dataset)} JPEGs 300-500 px, RandomResizedCrop 224 + flip, batch {args.batch_size}, workers {workers}, "
                  f"pin_memory {pin}, torch threads {torch.get_num_threads()}"),
        ("DataModule train loader", f"{ours_r:.0f} img/s  all: {', '.join(f'{r:.0f}' for r in rates['datamodule'])}"),
        ("ImageFolder + DataLoader", f"{plain_r:.0f} img/s  all: {', '.join(f'{r:.0f}' for r in rates['plain'])}"),
        ("DataModule, data.in_memory=true", f"{held_r:.0f} img/s  all: {', '.join(f'{r:.0f}' for r in rates['in_memory'])}"),
    ]
    report(
        "Data pipeline: training loader images/s",
        rows,
        [
            ("DataModule in_memory / plain images/s", held_r / plain_r, "for information: decoding once"),
            ("DataModule / plain images/s", ours_r / plain_r, "target >= 0.95"),
        ],
    )


if __name__ == "__main__":
    main()
