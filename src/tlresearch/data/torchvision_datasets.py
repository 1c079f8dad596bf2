"""The transfer datasets of the literature (Kornblith et al. 2019, VTAB), read by ``torchvision.datasets``.

torchvision downloads and parses each dataset (:mod:`tlresearch.data.torchvision_sources`);
:class:`TorchvisionDataModule` turns the object into our samples: the official splits as they
are, a validation split carved from train where there is no official one, the special
protocols (Caltech-101: 30 training images per class, the rest test; SUN397: Kornblith's
partition 1; EuroSAT: no official split, test and val carved), and the VTAB-1k subset
(``subset=vtab1k``: 800 train + 200 val drawn with a fixed seed from the official train+val
pool, drawn by the base class; ``subset=vtab1k_full``: train on those 1,000, no val). An image
stored in an array file (CIFAR, SVHN, PCam) is named ``<array file>#<index>``
(:mod:`tlresearch.data.arrays`) and read like an image file, by the same loader.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torchvision.datasets as tvd

from tlresearch.core.config import check_bool, check_choice, check_int, require
from tlresearch.core.errors import ConfigError

from .datamodule import ImageClassificationDataModule
from .images import Sample
from .splits import check_fractions, stratified_split, take_per_class
from .torchvision_sources import SOURCES, missing_message, open_split, read_items

log = logging.getLogger(__name__)

METRICS = ("acc", "mean_class_acc")


class TorchvisionDataModule(ImageClassificationDataModule):
    """One dataset of :data:`~tlresearch.data.torchvision_sources.SOURCES`, through its torchvision class.

    Args:
        dataset: its name (``cifar10``, ``fgvc_aircraft``, ...).
        train_split, val_split, test_split: torchvision's split names; ``val_split=None`` carves
            val from train (``val_per_class`` or ``val_fraction``); ``test_split=None`` carves test
            (``test_fraction``, EuroSAT) or, with ``train_per_class``, takes the rest (Caltech-101).
        options: more constructor arguments (``annotation_level`` of Aircraft, ``partition`` of DTD).
        partition: SUN397 only: the official partition ``Training_NN.txt``/``Testing_NN.txt`` to read.
        num_classes: the number the dataset must have (``None``: whatever the files hold).
        metric: ``acc`` or ``mean_class_acc``: what ``test/primary`` reports.
        verify_checksums: let torchvision check the official md5 sums (CIFAR, SVHN, Flowers).
        **common: the arguments of :class:`~tlresearch.data.datamodule.ImageClassificationDataModule`.
    """

    name = "torchvision"

    def __init__(
        self, root: str | os.PathLike, *, dataset: str, train_split: str | None = "train", val_split: str | None = None,
        test_split: str | None = "test", options: dict[str, Any] | None = None, partition: int | None = None,
        train_per_class: int | None = None, val_per_class: int | None = None, val_fraction: float = 0.1,
        test_fraction: float = 0.0, num_classes: int | None = None, metric: str = "acc",
        verify_checksums: bool = True, **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.dataset_name = check_choice("data.dataset", dataset, tuple(SOURCES))
        self.name = self.dataset_name  # type: ignore[misc] - recorded by describe()
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.options = dict(options or {})
        self.partition = check_int("data.partition", partition, minimum=1, optional=True)
        self.train_per_class = check_int("data.train_per_class", train_per_class, minimum=1, optional=True)
        self.val_per_class = check_int("data.val_per_class", val_per_class, minimum=0, optional=True)
        fractions = check_fractions({"data.val_fraction": val_fraction, "data.test_fraction": test_fraction})
        self.val_fraction, self.test_fraction = fractions["data.val_fraction"], fractions["data.test_fraction"]
        self.expected_classes = check_int("data.num_classes", num_classes, minimum=2, optional=True)
        self.metric = check_choice("data.metric", metric, METRICS)  # type: ignore[misc]
        self.verify_checksums = check_bool("data.verify_checksums", verify_checksums)
        self.arrays = SOURCES[self.dataset_name].arrays
        self._classes = []  # read with the files in setup()

    @property
    def classes(self) -> list[str]:
        """Class names, read from the files (downloaded first when ``download`` is on): the model's
        head is sized from them before training, so they are read on first use."""
        if not self._classes:
            self.prepare_data()
            self.setup()
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # -- files --------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download through torchvision when ``download`` is on (each split the config names)."""
        if not self.download:
            return
        for split in self._split_names():
            try:
                open_split(self.dataset_name, self.root, split, verify_checksums=self.verify_checksums, options=self.options)
                continue
            except ConfigError:
                pass
            if self.dataset_name == "stanford_cars":
                raise ConfigError(missing_message("stanford_cars", self.root, "torchvision's StanfordCars download is broken upstream"))
            source = SOURCES[self.dataset_name]
            cls = getattr(tvd, source.cls)
            kwargs = {**source.extra, **self.options}
            if source.split_arg == "train":
                kwargs["train"] = split == "train"
            elif source.split_arg:
                kwargs["split"] = split
            log.info("Downloading %s (%s split) into %s...", self.dataset_name, split, self.root)
            try:
                cls(str(self.root), download=True, **kwargs)
            except (OSError, RuntimeError) as error:
                raise ConfigError(missing_message(self.dataset_name, self.root, error)) from error

    def _split_names(self) -> list[str]:
        names = [s for s in (self.train_split, self.val_split, self.test_split) if s]
        return names or [""]

    def _read(self, split: str) -> list[Sample]:
        """The samples of one torchvision split (``""``: the dataset has no split argument)."""
        obj = open_split(self.dataset_name, self.root, split, verify_checksums=self.verify_checksums, options=self.options)
        classes, items = read_items(self.dataset_name, obj)
        if not self._classes:
            highest = max((label for _, label in items), default=0)
            if highest + 1 < len(classes):  # a partial copy (generated): its first K classes only
                log.warning("%s: labels on disk stop at %d of %d classes: using those.", self.dataset_name, highest + 1, len(classes))
                classes = classes[: highest + 1]
            self._classes = classes
            if self.expected_classes is not None and len(classes) != self.expected_classes:
                log.warning("%s: %d classes on disk, the official dataset has %d (a generated or partial copy?).",
                            self.dataset_name, len(classes), self.expected_classes)
        if not items:
            raise ConfigError(missing_message(self.dataset_name, self.root, f"the {split or 'whole'} split is empty"))
        return [Sample(path, Path(path).relative_to(self.root).as_posix(), label, classes[label]) for path, label in items]

    # -- splits -------------------------------------------------------------------------------

    def _build_splits(self) -> tuple[dict[str, list[Sample]], list[tuple[str, str]]]:
        if self.dataset_name == "sun397":
            splits = self._sun397_partition()
        else:
            splits = {"train": self._read(self.train_split or "")}
            if self.test_split:
                splits["test"] = self._read(self.test_split)
            if self.val_split:
                splits["val"] = self._read(self.val_split)
            splits.update(self._carve(splits))
        return splits, []  # the base class draws data.subset from train + val

    def _carve(self, splits: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        """Test (when there is no official one) and val (the same) out of train, stratified by class."""
        out: dict[str, list[Sample]] = {}
        train = splits["train"]
        if "test" not in splits:
            if self.train_per_class is not None:  # Caltech-101: N per class train, the rest test
                chosen = {s.rel for s in take_per_class(train, self.train_per_class, self.seed)}
                out["test"] = [s for s in train if s.rel not in chosen]
                train = [s for s in train if s.rel in chosen]
            else:
                require(self.test_fraction > 0, "data.test_fraction", self.test_fraction,
                        f"{self.dataset_name} has no official test split: use a fraction in (0, 1), e.g. 0.2.")
                parts = stratified_split(train, self.seed, fractions={"test": self.test_fraction})
                train, out["test"] = parts["train"], parts["test"]
        if "val" not in splits:
            if self.val_per_class is not None:
                parts = stratified_split(train, self.seed, per_group={"val": self.val_per_class})
            else:
                parts = stratified_split(train, self.seed, fractions={"val": self.val_fraction})
            train, out["val"] = parts["train"], parts["val"]
        out["train"] = train
        return out

    def _sun397_partition(self) -> dict[str, list[Sample]]:
        """Kornblith et al.'s SUN397 split: the official ``Partitions/Training_NN.txt``/``Testing_NN.txt``
        (torchvision reads no partition), val carved from training."""
        every = self._read("")
        folder = next((p for p in (self.root / "SUN397" / "Partitions", self.root / "Partitions") if p.is_dir()), None)
        number = self.partition or 1
        if folder is None:
            raise ConfigError(
                f"data.root={str(self.root)!r}: SUN397's Partitions/ folder is missing (looked in {self.root / 'SUN397'} and "
                f"{self.root}); download https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip and extract it "
                f"into {self.root / 'SUN397'} (data.partition={number} reads Training_{number:02d}.txt and Testing_{number:02d}.txt)."
            )
        by_name = {"/" + s.rel.split("/", 1)[1]: s for s in every}
        splits = {}
        for split, stem in (("train", "Training"), ("test", "Testing")):
            lines = (folder / f"{stem}_{number:02d}.txt").read_text().split()
            splits[split] = [by_name[line] for line in lines if line in by_name]
        return {**splits, **self._carve(splits)}

    # -- datasets -----------------------------------------------------------------------------

    def _verify_test(self, test: list[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
        if self.arrays:  # pixels, not encoded files: nothing to decode (the files were read when the splits were)
            return test, []
        return super()._verify_test(test)

    def _describe_config(self) -> dict[str, Any]:
        return {
            "torchvision_class": SOURCES[self.dataset_name].cls, "splits": [self.train_split, self.val_split, self.test_split],
            "options": self.options, "partition": self.partition, "train_per_class": self.train_per_class,
            "val_per_class": self.val_per_class, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
            "metric": self.metric,
        }
