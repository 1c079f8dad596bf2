"""Oxford-IIIT Pet (37 breeds of cats and dogs), through ``torchvision.datasets.OxfordIIITPet``.

On disk (torchvision's layout)::

    root/oxford-iiit-pet/images/<Breed>_<n>.jpg
    root/oxford-iiit-pet/annotations/{trainval.txt, test.txt, list.txt, trimaps/, xmls/}

An annotation line ``Abyssinian_100 1 1 1`` is: image id, class id 1..37, species (1 cat,
2 dog), breed id within the species. The official ``trainval``/``test`` split is used as it is
(a listed file that is missing is dropped; a test image that does not decode is excluded and
counted by the base class, never replaced); a validation split is carved out of ``trainval``,
stratified by breed and fixed by ``seed``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.error import URLError

from tlresearch.core.config import check_choice, check_int, is_int, require
from tlresearch.core.errors import ConfigError

from .datamodule import ImageClassificationDataModule
from .download import network_error
from .images import Sample
from .splits import check_fractions, stratified_split

log = logging.getLogger(__name__)

#: The 37 breeds as their image ids spell them, in class-id order (1..37). Cat breeds are
#: Capitalised, dog breeds lowercase: the dataset's own convention.
PET_BREED_IDS: tuple[str, ...] = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle",
    "Bengal", "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
    "japanese_chin", "keeshond", "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland",
    "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed",
    "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier",
    "wheaten_terrier", "yorkshire_terrier",
)  # fmt: skip


def breed_name(breed_id: str) -> str:
    """``"american_pit_bull_terrier"`` -> ``"American Pit Bull Terrier"``, exactly as torchvision names classes."""
    return " ".join(part.title() for part in breed_id.split("_"))


#: Class names in torchvision's ``OxfordIIITPet.classes`` order (label i = PET_BREEDS[i]).
PET_BREEDS: tuple[str, ...] = tuple(breed_name(b) for b in PET_BREED_IDS)
#: Species class names, as torchvision's ``bin_classes``.
PET_SPECIES: tuple[str, str] = ("Cat", "Dog")
#: Species label (0 cat, 1 dog) of each breed, by class index.
PET_BREED_SPECIES: tuple[int, ...] = tuple(0 if b[0].isupper() else 1 for b in PET_BREED_IDS)
PETS_URLS: tuple[str, ...] = (
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
)
TARGETS = ("breed", "species")


class OxfordPetsDataModule(ImageClassificationDataModule):
    """Oxford-IIIT Pet: official trainval/test, plus a validation split carved from trainval.

    Args:
        root: the folder holding (or to receive) ``oxford-iiit-pet/``.
        target: ``"breed"`` (37 classes, :data:`PET_BREEDS`) or ``"species"`` (``["Cat", "Dog"]``).
        val_per_class: images per breed moved from trainval to val (20, as Kornblith et al.);
            a breed too small for it is capped so that training keeps at least as many images
            as val (:func:`~tlresearch.data.splits.cap_held_out`: 7 trainval images give val 3,
            train 4); ``None`` uses ``val_fraction`` instead.
        val_fraction: share of each breed's trainval images moved to val, in [0, 0.5], when
            ``val_per_class`` is ``None`` (the same cap applies to small breeds).
        num_breeds: use only the first K breeds in class-id order, e.g. for quick experiments.
            ``None`` (auto): all 37, or the first K when the local ``trainval.txt`` lists only
            those (data written by ``generate pets --num-classes K``).
        **common: the arguments of :class:`~tlresearch.data.datamodule.ImageClassificationDataModule`.
    """

    name = "pets"
    metric = "mean_class_acc"  # as Kornblith et al. report Pets

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        target: str = "breed",
        val_per_class: int | None = 20,
        val_fraction: float = 0.2,
        num_breeds: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.target = check_choice("data.target", target, TARGETS)
        self.val_per_class = check_int(
            "data.val_per_class", val_per_class, minimum=0, optional=True,
            fix="use a non-negative integer (images per breed), or null to use data.val_fraction.",
        )
        self.val_fraction = check_fractions({"data.val_fraction": val_fraction})["data.val_fraction"]
        if num_breeds is not None:
            valid = is_int(num_breeds) and 2 <= num_breeds <= len(PET_BREED_IDS)
            require(valid, "data.num_breeds", num_breeds, "use an integer in 2..37 (the first K breeds), or null (auto).")
        self.num_breeds = num_breeds if num_breeds is not None else self._breeds_on_disk()
        # Known without touching the disk: the breed list is fixed by the dataset.
        self._classes = list(PET_BREEDS[: self.num_breeds]) if self.target == "breed" else list(PET_SPECIES)

    def _breeds_on_disk(self) -> int:
        """``num_breeds=null``: all 37, unless a local trainval.txt lists only the first K breeds
        (a copy written by :mod:`tlresearch.data.generate`). Reads that small local file when
        it exists; never downloads."""
        path = self.root / "oxford-iiit-pet" / "annotations" / "trainval.txt"
        if not path.is_file():
            return len(PET_BREED_IDS)
        try:
            lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
            highest = max((int(line.split()[1]) for line in lines), default=0)
        except (OSError, ValueError, IndexError):
            return len(PET_BREED_IDS)  # setup() reads the file again and reports what is wrong with it
        if 2 <= highest < len(PET_BREED_IDS):
            log.info("%s lists only the first %d of the 37 breeds: using those (set data.num_breeds to choose).", path, highest)
            return highest
        return len(PET_BREED_IDS)

    @property
    def base_folder(self) -> Path:
        return self.root / "oxford-iiit-pet"

    def _exists(self) -> bool:
        return (self.base_folder / "images").is_dir() and (self.base_folder / "annotations").is_dir()

    def prepare_data(self) -> None:
        """Download and extract the dataset through torchvision when it is missing and ``download`` is on."""
        if self._exists():
            return
        if not self.download:
            raise ConfigError(self._missing_message())
        from torchvision.datasets import OxfordIIITPet

        log.info("Downloading Oxford-IIIT Pet (~800 MB) into %s...", self.base_folder)
        try:
            OxfordIIITPet(str(self.root), split="trainval", download=True)
        except (URLError, OSError) as error:
            raise network_error("Oxford-IIIT Pet", PETS_URLS, self.base_folder, error) from error
        except RuntimeError as error:  # torchvision's "File not found or corrupted" (checksum mismatch)
            raise ConfigError(
                f"data.download=true: downloading Oxford-IIIT Pet into {self.base_folder} failed ({error}). Delete the "
                f"*.tar.gz files there and run again, or download {' and '.join(PETS_URLS)} by hand and extract them there."
            ) from error

    def _missing_message(self) -> str:
        return (
            f"data.root={str(self.root)!r}: Oxford-IIIT Pet not found: looked for {self.base_folder / 'images'} and "
            f"{self.base_folder / 'annotations'}, and data.download=false. Set data.download=true to download it, or "
            f"download {' and '.join(PETS_URLS)} and extract both into {self.base_folder}."
        )

    def _build_splits(self) -> tuple[dict[str, list[Sample]], list[tuple[str, str]]]:
        if not self._exists():
            self.prepare_data()  # raises when download is off; a no-op once Lightning has run it
        trainval, dropped_tv = self._read_split("trainval")
        test, dropped_test = self._read_split("test")
        self._check_breeds_present(trainval)
        if self.val_per_class is not None:
            splits = stratified_split(trainval, self.seed, per_group={"val": self.val_per_class})
        else:
            splits = stratified_split(trainval, self.seed, fractions={"val": self.val_fraction})
        splits["test"] = test
        return splits, dropped_tv + dropped_test

    def _read_split(self, split: str) -> tuple[list[Sample], list[tuple[str, str]]]:
        """The split's samples (within ``num_breeds``), cross-checked against torchvision's reading."""
        records = _read_annotations(self.base_folder / "annotations" / f"{split}.txt")
        self._check_against_torchvision(split, records)
        samples: list[Sample] = []
        dropped: list[tuple[str, str]] = []
        for image_id, class_index, species in records:
            if class_index >= self.num_breeds:
                continue
            rel = f"images/{image_id}.jpg"
            path = self.base_folder / rel
            if not path.is_file():
                dropped.append((rel, "missing: listed in annotations/" + f"{split}.txt but not on disk"))
                continue
            label = class_index if self.target == "breed" else species
            samples.append(Sample(str(path), rel, label, PET_BREEDS[class_index]))
        if dropped:
            log.warning("%d images listed in %s.txt are missing from %s (e.g. %s).",
                        len(dropped), split, self.base_folder / "images", dropped[0][0])
        if not samples:
            raise ConfigError(f"data.root={str(self.root)!r}: no images of annotations/{split}.txt found under "
                              f"{self.base_folder / 'images'}.")
        return samples, dropped

    def _check_against_torchvision(self, split: str, records: list[tuple[str, int, int]]) -> None:
        """Load the split through torchvision too: its layout check passes and it sees the same classes."""
        from torchvision.datasets import OxfordIIITPet

        try:
            reference = OxfordIIITPet(str(self.root), split=split, download=False)
        except (RuntimeError, OSError, ValueError) as error:
            raise ConfigError(
                f"data.root={str(self.root)!r}: torchvision cannot read Oxford-IIIT Pet's {split} split ({error}). "
                f"{self._missing_message()}"
            ) from error
        expected = [PET_BREEDS[i] for i in sorted({c for _, c, _ in records})]
        if len(reference) != len(records) or list(reference.classes) != expected:
            raise ConfigError(
                f"data.root={str(self.root)!r}: annotations/{split}.txt reads differently here and in torchvision "
                f"(classes {list(reference.classes)[:5]}... vs {expected[:5]}...); the annotation files are not in the official format."
            )

    def _check_breeds_present(self, trainval: list[Sample]) -> None:
        present = {s.group for s in trainval}
        missing = [b for b in PET_BREEDS[: self.num_breeds] if b not in present]
        if missing:
            raise ConfigError(
                f"data.num_breeds={self.num_breeds}: the annotations under {self.base_folder} have no trainval images of "
                f"{len(missing)} of the first {self.num_breeds} breeds ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}). "
                f"Set data.num_breeds to the number of breeds this copy holds (e.g. data.num_breeds={len(present)})."
            )

    def _describe_config(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "split": "official trainval/test; val carved from trainval, stratified by breed",
            "val_per_class": self.val_per_class,
            "val_fraction": None if self.val_per_class is not None else self.val_fraction,
            "num_breeds": self.num_breeds,
        }


def _read_annotations(path: Path) -> list[tuple[str, int, int]]:
    """``(image id, class index 0..36, species 0/1)`` per line of an annotation file, validated.

    A line whose image id does not belong to the breed of its class id, or whose species does
    not match the breed, raises: nothing is silently mislabelled.
    """
    records: list[tuple[str, int, int]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"data.root: cannot read {path} ({error}); the Oxford-IIIT Pet annotations are incomplete.") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{path}, line {number} ({line.strip()!r})"
        try:
            image_id, class_id, species_id = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError) as error:
            raise ConfigError(f"data.root: malformed annotation at {where}: expected 'image_id class_id species breed_id'.") from error
        if not 1 <= class_id <= len(PET_BREED_IDS):
            raise ConfigError(f"data.root: class id {class_id} out of 1..37 at {where}.")
        breed = PET_BREED_IDS[class_id - 1]
        if image_id.rsplit("_", 1)[0] != breed or species_id - 1 != PET_BREED_SPECIES[class_id - 1]:
            species = PET_SPECIES[PET_BREED_SPECIES[class_id - 1]]
            raise ConfigError(f"data.root: annotation at {where} contradicts the breed of class {class_id} ({breed}, {species}).")
        records.append((image_id, class_id - 1, species_id - 1))
    return records
