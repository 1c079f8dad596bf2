"""The base of every image-classification DataModule: arguments, transforms, loaders, provenance.

:class:`ImageClassificationDataModule` checks the arguments every dataset shares (root, batch
size, workers, seed, augmentation, preprocessing...; the shared checks: data/settings.py), builds the train/val/test datasets from
the splits a subclass gives (:meth:`~ImageClassificationDataModule._build_splits`; the test split
verified, its undecodable files excluded and recorded), serves their loaders (a resumable,
seeded shuffle for train) and describes what it used (:meth:`~ImageClassificationDataModule.describe`
for provenance.json, :meth:`~ImageClassificationDataModule.split_report` for metrics.json). A dataset known
only by its folder layout subclasses :class:`~tlresearch.data.scanned.ScannedImageDataModule`
instead. :class:`SplitLoaders` is the loader plumbing it shares with the feature-cache module.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tlresearch.core.config import check_bool, check_choice, check_int, require
from tlresearch.core.errors import ConfigError

from .images import ImageListDataset, Sample, reason_category, verify_samples
from .memory import hold_in_memory
from .sampler import ResumableTrainData
from .settings import check_root, coerce_augmentation, coerce_preprocessing, resolve_num_workers, resolve_pin_memory
from .splits import SPLITS, SUBSETS, samples_sha256, take_per_class, vtab1k_subset
from .transforms import Augmentation, Preprocessing, eval_transform, train_transform

log = logging.getLogger(__name__)


def primary_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``test/primary`` (and ``test/primary_ci_low|high``): the test metric ``data/metric`` names,
    copied so tables read one key whatever the dataset. Empty when there is no test result."""
    name = metrics.get("data/metric")
    if name is None or f"test/{name}" not in metrics:
        return {}
    out = {"test/primary": metrics[f"test/{name}"]}
    for end in ("ci_low", "ci_high"):
        if f"test/{name}_{end}" in metrics:
            out[f"test/primary_{end}"] = metrics[f"test/{name}_{end}"]
    return out


class SplitLoaders:
    """Lightning's three loader hooks, each a call of ``self.dataloader(split)``: every
    DataModule here (images or cached features) builds its loaders in one method."""

    def dataloader(self, split: str) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")


class ImageClassificationDataModule(SplitLoaders, ResumableTrainData, pl.LightningDataModule):
    """Base of every image-classification DataModule: arguments, transforms, loaders, provenance.

    Subclasses set ``self._classes`` in their constructor (available without touching the
    network) and implement :meth:`prepare_data` (download) and :meth:`_build_splits`.

    Args:
        root: where the dataset lives (or is downloaded to).
        batch_size: images per batch, for every split.
        num_workers: DataLoader worker processes; ``"auto"`` = min(8, CPUs - 1).
        seed: fixes the splits and the per-class subset. (The shuffle order follows the global
            seed, ``torch.initial_seed()`` when a loader is built, so training seeds can vary over
            one fixed split.)
        download: whether :meth:`prepare_data` may download a missing dataset.
        augment: fields of :class:`~tlresearch.data.transforms.Augmentation` for the training
            split (``None`` = its defaults; ``{"enabled": False}`` trains on the eval transform;
            ``"auto"``, the default, is settled by the protocol through :meth:`set_augmentation`).
        preprocessing: the backbone's :class:`~tlresearch.data.transforms.Preprocessing`
            (``None`` = ImageNet defaults at 224 px); also settable later with :meth:`set_preprocessing`.
        pin_memory: DataLoader ``pin_memory``; ``"auto"`` = whether CUDA is available.
        max_per_class: keep at most this many *training* images per class (a deterministic,
            nested subset for small-data experiments); val and test stay whole.
        in_memory: decode every image once into RAM at the backbone's resize size and serve
            batches from there (:mod:`tlresearch.data.memory`; for small datasets).
        subset: ``None``; ``"vtab1k"``: train on ``subset_train`` and validate on ``subset_val``
            images drawn with ``seed`` from train+val (:func:`~tlresearch.data.splits.vtab1k_subset`);
            ``"vtab1k_full"``: train on those, no val. The test split stays whole.
    """

    #: Name recorded by :meth:`describe`.
    name: ClassVar[str] = "images"
    #: The test metric the literature reports for this dataset: ``acc`` (top-1) or ``mean_class_acc``
    #: (mean per-class accuracy); ``metrics.json`` copies it to ``test/primary`` (:func:`primary_metrics`).
    metric: ClassVar[str] = "acc"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        seed: int = 0,
        download: bool = True,
        augment: Mapping[str, Any] | Augmentation | None = None,
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
        pin_memory: bool | str = "auto",
        max_per_class: int | None = None,
        in_memory: bool = False,
        subset: str | None = None,
        subset_train: int = 800,
        subset_val: int = 200,
    ) -> None:
        super().__init__()
        self.root = check_root(root)
        self.batch_size = check_int("data.batch_size", batch_size, minimum=1)
        self.num_workers = resolve_num_workers(num_workers)
        self.seed = check_int("data.seed", seed)
        self.download = check_bool("data.download", download)
        self.augmentation = coerce_augmentation(augment)
        self.preprocessing = coerce_preprocessing(preprocessing)
        self.pin_memory = resolve_pin_memory(pin_memory)
        self.max_per_class = check_int("data.max_per_class", max_per_class, minimum=1, optional=True)
        self.in_memory = check_bool("data.in_memory", in_memory)
        require(subset is None or subset in SUBSETS, "data.subset", subset, f"use null or one of {', '.join(SUBSETS)}.")
        self.subset = subset
        self.subset_train = check_int("data.subset_train", subset_train, minimum=1)
        self.subset_val = check_int("data.subset_val", subset_val, minimum=1)
        self._in_memory: dict[str, Any] = {}  # split -> images held in RAM (data/memory.py)
        self._classes: list[str] = getattr(self, "_classes", [])
        self._splits: dict[str, list[Sample]] | None = None
        self._datasets: dict[str, ImageListDataset] = {}
        self._dropped: list[tuple[str, str]] = []
        self._test_excluded: list[tuple[str, str]] = []  # (relative path, reason): test files that failed to decode

    # -- classes ------------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names; label ``i`` is ``classes[i]``."""
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    # -- transforms ---------------------------------------------------------------------------

    def set_preprocessing(self, preprocessing: Preprocessing | Mapping[str, Any]) -> None:
        """Use the backbone's preprocessing; datasets already built get the new transforms too."""
        self.preprocessing = coerce_preprocessing(preprocessing)
        self._refresh_transforms()

    def set_augmentation(self, augmentation: Augmentation | Mapping[str, Any]) -> None:
        """Use ``augmentation`` for training (the protocol settles ``data.augment.enabled=auto``
        this way); a training dataset already built gets the new transform too."""
        self.augmentation = coerce_augmentation(augmentation)
        self._refresh_transforms()

    def _refresh_transforms(self) -> None:
        for split, dataset in self._datasets.items():
            dataset.transform = self._transform(split)

    def _transform(self, split: str) -> Callable[[Image.Image], Any]:
        if split == "train":
            return train_transform(self.preprocessing, self.augmentation)
        return eval_transform(self.preprocessing)

    # -- lifecycle ----------------------------------------------------------------------------

    def prepare_data(self) -> None:  # pragma: no cover - every subclass overrides it
        """Download the dataset if needed (Lightning calls it on one process per node)."""

    def _build_splits(self) -> tuple[dict[str, list[Sample]], list[tuple[str, str]]]:
        """``({"train": [...], "val": [...], "test": [...]}, dropped (path, reason) pairs)``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val/test datasets (once: later calls return at once).

        The test split's files are verified here (:meth:`_verify_test`); the datasets of train
        and val replace a file that fails later by another of its class, the test dataset never
        does (:class:`~tlresearch.data.images.ImageListDataset`).
        """
        if self._splits is not None:
            return
        splits, dropped = self._build_splits()
        splits = {name: list(splits.get(name, [])) for name in SPLITS}
        if self.subset is not None:
            pool = splits["train"] + splits["val"]
            splits.update(vtab1k_subset(pool, self.seed, self.subset_train, self.subset_val, full=self.subset == "vtab1k_full"))
        self._check_train_covers_classes(splits["train"])
        if self.max_per_class is not None:
            splits["train"] = take_per_class(splits["train"], self.max_per_class, self.seed)
        splits["test"], self._test_excluded = self._verify_test(splits["test"])
        self._splits, self._dropped = splits, list(dropped)
        self._datasets = {name: self._make_dataset(name, samples) for name, samples in splits.items()}
        sizes = "; ".join(
            f"{name} {len(splits[name])} (per class {self._count_summary(name)})" for name in SPLITS
        )
        log.info(
            "%s: %d classes; images %s; %d files dropped, %d test images excluded.",
            self.name, self.num_classes, sizes, len(dropped), len(self._test_excluded),
        )

    def _make_dataset(self, split: str, samples: list[Sample]) -> ImageListDataset:
        """The dataset of one split (a subclass whose images are not files returns its own kind)."""
        return ImageListDataset(samples, self._transform(split), replace_unreadable=split != "test")

    def _verify_test(self, test: list[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
        """The test split without the files that fail to decode now, and those files with their reasons.

        The test set is never silently changed. Files a scanner dropped never entered a split;
        this catches the rest: a file that passed the scan but broke since, or a split that
        is never scanned (Oxford-IIIT Pet reads its annotation lists). A DataLoader item
        cannot vanish, so the failures are not dropped at load time: every test file is
        decoded once here, in threads, and the test dataset is built without the failures,
        which :meth:`describe` lists (provenance.json) and :meth:`split_report` counts
        (``data/test_excluded``). Every test metric is then computed on the remaining images:
        its denominator excludes them, and no image stands in for another. The feature cache
        reads the same samples, so its key changes with the exclusions too.
        """
        kept, excluded = verify_samples(test, threads=max(1, self.num_workers))
        for rel, reason in excluded:
            log.warning("Test image %s excluded: %s (the test set is never changed silently; see provenance.json).", rel, reason)
        return kept, excluded

    def _check_train_covers_classes(self, train: Sequence[Sample]) -> None:
        present = {s.label for s in train}
        missing = [name for i, name in enumerate(self._classes) if i not in present]
        if missing and self.subset is not None:  # VTAB-1k draws 800 images, not per class: a class may get none
            log.warning("data.subset=%s: no training images of %d class(es) (%s...).", self.subset, len(missing), missing[0])
            return
        if missing:
            raise ConfigError(
                f"data.root={str(self.root)!r}: no training images for class(es) {', '.join(missing)}; every class needs "
                "at least one usable training image. Add images or remove those classes."
            )

    def dataset(self, split: str) -> ImageListDataset:
        """The dataset of ``"train"``, ``"val"`` or ``"test"`` (set up on first use)."""
        check_choice("split", split, SPLITS)
        self.setup()
        return self._datasets[split]

    # -- loaders ------------------------------------------------------------------------------

    def dataloader(self, split: str, *, shuffle: bool | None = None) -> DataLoader:
        """A DataLoader over ``split``; only train shuffles by default, with a generator seeded from the global seed."""
        shuffle = (split == "train") if shuffle is None else shuffle
        dataset: Any = self.dataset(split)
        if self.in_memory:
            pre = self.preprocessing
            dataset = hold_in_memory(self._in_memory, split, dataset, pre.resize_size, pre.interpolation_mode, self.num_workers)
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0, drop_last=False)
        if shuffle:
            # Shuffle order and augmentation follow the global seed set by seed_everything, not
            # data.seed: runs with different training seeds see different orders over the same,
            # fixed split. The resumable loader makes them a function of (seed, epoch, image), so
            # a run resumed mid-epoch continues exactly (data/sampler.py).
            return self.resumable_train_loader(dataset, seed=torch.initial_seed(), **common)
        return DataLoader(dataset, shuffle=False, generator=torch.Generator().manual_seed(torch.initial_seed()), **common)

    # -- provenance ---------------------------------------------------------------------------

    def _describe_config(self) -> dict[str, Any]:
        """Dataset-specific settings for :meth:`describe`."""
        return {}

    def per_class_counts(self, split: str) -> list[int]:
        """Images of each class (by label) in ``split``."""
        self.setup()
        assert self._splits is not None
        counts = Counter(s.label for s in self._splits[split])
        return [counts.get(label, 0) for label in range(self.num_classes)]

    def _count_summary(self, split: str) -> str:
        counts = self.per_class_counts(split) or [0]
        return f"min {min(counts)}, median {statistics.median(counts):g}, max {max(counts)}"

    def split_report(self) -> dict[str, int | float]:
        """The ``data/*`` numbers of ``metrics.json``: what each split held and what was changed.

        Per split: ``data/<split>_images`` and the per-class ``data/<split>_per_class_min``,
        ``_median``, ``_max`` (a summary stays readable for 37 or 100 classes; the full table is
        :meth:`describe`'s ``images_per_class``, in provenance.json). ``data/test_excluded``:
        test files excluded because they did not decode (:meth:`_verify_test`);
        ``data/train_replaced``, ``data/val_replaced``: files that failed to load during the run
        and were replaced by another image of their class (counted over this process's
        DataLoader workers: under DDP, rank 0's share).
        """
        self.setup()
        report: dict[str, int | float] = {}
        for split in SPLITS:
            counts = self.per_class_counts(split) or [0]
            report[f"data/{split}_images"] = sum(counts)
            report[f"data/{split}_per_class_min"] = min(counts)
            report[f"data/{split}_per_class_median"] = statistics.median(counts)
            report[f"data/{split}_per_class_max"] = max(counts)
        report["data/test_excluded"] = len(self._test_excluded)
        report["data/train_replaced"] = self._datasets["train"].num_unreadable
        report["data/val_replaced"] = self._datasets["val"].num_unreadable
        report["data/metric"] = self.metric  # type: ignore[assignment] - which test metric the literature reports (test/primary)
        return report

    def describe(self) -> dict[str, Any]:
        """Provenance: which data, which split, which files were dropped or excluded and why (JSON-serialisable)."""
        self.setup()
        assert self._splits is not None
        splits = self._splits
        every = [s for name in SPLITS for s in splits[name]]
        per_class = {name: self.per_class_counts(name) for name in SPLITS}
        return {
            "dataset": self.name,
            "root": str(self.root.resolve()),
            "classes": self.classes,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "max_per_class": self.max_per_class,
            "subset": self.subset,
            "subset_sizes": [self.subset_train, self.subset_val] if self.subset else None,
            **self._describe_config(),
            "num_samples": {name: len(splits[name]) for name in SPLITS},
            "images_per_class": {c: {name: per_class[name][i] for name in SPLITS} for i, c in enumerate(self._classes)},
            "manifest_sha256": samples_sha256(every),
            "split_sha256": {name: samples_sha256(splits[name]) for name in SPLITS},
            "dropped": {
                "total": len(self._dropped),
                "by_reason": dict(sorted(Counter(reason_category(r) for _, r in self._dropped).items())),
            },
            "test_excluded": [{"path": rel, "reason": reason} for rel, reason in self._test_excluded],
        }
