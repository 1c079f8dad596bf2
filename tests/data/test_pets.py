"""Oxford-IIIT Pet on a generated copy in the real layout."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision.datasets import OxfordIIITPet

from tests.conftest import PETS_BREEDS, PETS_IMAGES_PER_BREED, PETS_SMALL_BREEDS, PETS_SMALL_TRAINVAL
from tests.helpers import truncate_file
from tlresearch.core.errors import ConfigError
from tlresearch.data.images import UnreadableImageError
from tlresearch.data.pets import PET_BREEDS, OxfordPetsDataModule
from tlresearch.data.transforms import Preprocessing


def pets(root, **kwargs) -> OxfordPetsDataModule:
    kwargs = {"num_workers": 0, "download": False, "val_per_class": None, **kwargs}
    return OxfordPetsDataModule(root=str(root), **kwargs)


def annotation_ids(root: Path, split: str) -> list[str]:
    lines = (root / "oxford-iiit-pet" / "annotations" / f"{split}.txt").read_text().splitlines()
    return [line.split()[0] for line in lines]


def test_classes_are_known_without_any_data():
    dm = OxfordPetsDataModule(root="/nonexistent/pets", download=False)
    assert dm.num_classes == 37 and dm.classes[:3] == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    assert dm.classes[-1] == "Yorkshire Terrier"
    assert OxfordPetsDataModule(root="/nonexistent/pets", target="species").classes == ["Cat", "Dog"]


def test_class_names_match_torchvision(pets_root):
    assert list(OxfordIIITPet(str(pets_root), split="trainval").classes) == list(PET_BREEDS[:PETS_BREEDS])


def test_official_split_sizes_and_files(pets_root):
    dm = pets(pets_root, val_per_class=2)
    dm.setup()
    assert dm.num_classes == PETS_BREEDS  # auto: the generated copy holds the first 6 breeds
    trainval, test = annotation_ids(pets_root, "trainval"), annotation_ids(pets_root, "test")
    assert len(trainval) + len(test) == PETS_BREEDS * PETS_IMAGES_PER_BREED
    train_val_ids = {Path(s.rel).stem for split in ("train", "val") for s in dm.dataset(split).samples}
    assert train_val_ids == set(trainval)
    assert sorted(Path(s.rel).stem for s in dm.dataset("test").samples) == sorted(test)
    assert len(dm.dataset("val")) == 2 * PETS_BREEDS
    assert dm.describe()["num_samples"] == {"train": len(trainval) - 2 * PETS_BREEDS, "val": 2 * PETS_BREEDS, "test": len(test)}


def test_labels_follow_the_breed_in_the_file_name(pets_root):
    dm = pets(pets_root)
    for split in ("train", "val", "test"):
        for sample in dm.dataset(split).samples:
            breed = Path(sample.rel).stem.rsplit("_", 1)[0]
            assert dm.classes[sample.label] == " ".join(p.title() for p in breed.split("_"))


def test_val_split_is_stratified_and_fixed_by_the_seed(pets_root):
    def val(seed: int, **kw) -> list[str]:
        dm = pets(pets_root, seed=seed, **kw)
        return [s.rel for s in dm.dataset("val").samples]

    first = pets(pets_root, seed=0, val_fraction=0.34)
    per_breed = Counter(first.classes[s.label] for s in first.dataset("val").samples)
    assert set(per_breed.values()) == {2} and len(per_breed) == PETS_BREEDS  # round(6 * 0.34) = 2 per breed
    assert val(0, val_fraction=0.34) == val(0, val_fraction=0.34)
    assert val(1, val_fraction=0.34) != val(0, val_fraction=0.34)
    test0 = [s.rel for s in pets(pets_root, seed=0).dataset("test").samples]
    assert test0 == [s.rel for s in pets(pets_root, seed=1).dataset("test").samples]  # the official test split


def test_species_target_labels_follow_capitalisation(pets_root):
    dm = pets(pets_root, target="species")
    assert dm.classes == ["Cat", "Dog"]
    seen = set()
    for split in ("train", "val", "test"):
        for sample in dm.dataset(split).samples:
            is_cat = Path(sample.rel).name[0].isupper()  # the dataset's convention: cat breeds are Capitalised
            assert dm.classes[sample.label] == ("Cat" if is_cat else "Dog"), sample.rel
            seen.add(sample.label)
    assert seen == {0, 1}


def test_species_val_split_is_stratified_by_breed(pets_root):
    breed = pets(pets_root, val_per_class=1)
    species = pets(pets_root, val_per_class=1, target="species")
    assert [s.rel for s in species.dataset("val").samples] == [s.rel for s in breed.dataset("val").samples]


def test_num_breeds(pets_root):
    dm = pets(pets_root, num_breeds=3)
    assert dm.classes == list(PET_BREEDS[:3])
    assert {s.label for s in dm.dataset("train").samples} == {0, 1, 2}
    with pytest.raises(ConfigError, match=r"data\.num_breeds=37.*data\.num_breeds=6"):
        pets(pets_root, num_breeds=37).setup()
    with pytest.raises(ConfigError, match=r"data\.num_breeds"):
        pets(pets_root, num_breeds=1)


def test_bad_target_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.target='specie'.*Did you mean: species"):
        OxfordPetsDataModule(root="/x", target="specie")


def test_batches_have_the_preprocessing_shape_and_are_normalised(pets_root):
    pre = Preprocessing(crop_size=64, resize_size=72)
    dm = pets(pets_root, batch_size=8, preprocessing=pre)
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
        mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
        pixels = x * std + mean
        assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4  # un-normalised back into [0, 1]
        assert x.min() < 0  # i.e. it was normalised


def test_max_per_class_subsets_only_train(pets_root):
    full, small = pets(pets_root), pets(pets_root, max_per_class=2)
    counts = Counter(s.label for s in small.dataset("train").samples)
    assert set(counts.values()) == {2}
    assert set(small.dataset("train").samples) <= set(full.dataset("train").samples)
    assert small.dataset("val").samples == full.dataset("val").samples
    assert small.dataset("test").samples == full.dataset("test").samples


def test_describe_is_stable_provenance(pets_root):
    a, b, c = pets(pets_root).describe(), pets(pets_root).describe(), pets(pets_root, seed=5).describe()
    assert a == b
    assert a["dataset"] == "pets" and a["num_classes"] == PETS_BREEDS and a["dropped"] == {"total": 0, "by_reason": {}}
    assert a["manifest_sha256"] == c["manifest_sha256"]  # the same files...
    assert a["split_sha256"]["val"] != c["split_sha256"]["val"]  # ...split differently
    assert a["split_sha256"]["test"] == c["split_sha256"]["test"]


def test_missing_dataset_without_download_says_where_it_looked(tmp_path):
    dm = OxfordPetsDataModule(root=str(tmp_path), download=False)
    with pytest.raises(ConfigError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "oxford-iiit-pet" / "images") in message and "data.download=true" in message
    with pytest.raises(ConfigError, match="data.download=true"):
        dm.setup()


def test_download_failure_says_there_is_no_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    with pytest.raises(ConfigError, match="no network access") as info:
        OxfordPetsDataModule(root=str(tmp_path), download=True).prepare_data()
    assert "robots.ox.ac.uk" in str(info.value) and isinstance(info.value.__cause__, URLError)


def test_contradicting_annotation_is_refused(pets_root, tmp_path):
    shutil.copytree(pets_root / "oxford-iiit-pet", tmp_path / "oxford-iiit-pet")
    path = tmp_path / "oxford-iiit-pet" / "annotations" / "test.txt"
    lines = path.read_text().splitlines()
    image_id, _, species, breed = lines[0].split()
    lines[0] = f"{image_id} 2 {species} {breed}"  # an Abyssinian labelled American Bulldog
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="contradicts"):
        pets(tmp_path).setup()


def test_missing_images_are_dropped_and_listed(pets_root, tmp_path):
    shutil.copytree(pets_root / "oxford-iiit-pet", tmp_path / "oxford-iiit-pet")
    images = sorted((tmp_path / "oxford-iiit-pet" / "images").glob("*.jpg"))
    images[0].unlink()  # listed in the annotations, gone from disk
    dm = pets(tmp_path)
    assert dm.describe()["dropped"] == {"total": 1, "by_reason": {"missing": 1}}
    assert all(Path(s.path).is_file() for split in ("train", "val", "test") for s in dm.dataset(split).samples)


# -- small classes: the validation carve-out ---------------------------------------------------


def test_default_carve_out_keeps_at_least_as_many_training_as_validation_images(pets_small_generated, caplog):
    """With the default val_per_class=20, a breed of 7 trainval images trains on 4 and validates
    on 3 (never 1 and 6); the log, split_report() and describe() say so."""
    caplog.set_level(logging.INFO, logger="tlresearch.data")
    dm = OxfordPetsDataModule(root=str(pets_small_generated.root), download=False, num_workers=0)
    assert dm.val_per_class == 20  # the default
    dm.setup()
    train, val = dm.per_class_counts("train"), dm.per_class_counts("val")
    assert sum(train) + sum(val) == PETS_SMALL_BREEDS * PETS_SMALL_TRAINVAL
    assert train == [4] * PETS_SMALL_BREEDS and val == [3] * PETS_SMALL_BREEDS
    report = dm.split_report()
    assert report["data/train_per_class_min"] == 4 and report["data/val_per_class_max"] == 3
    assert report["data/val_images"] == 3 * PETS_SMALL_BREEDS and report["data/test_per_class_median"] == PETS_SMALL_TRAINVAL
    assert report["data/test_excluded"] == report["data/train_replaced"] == report["data/val_replaced"] == 0
    assert dm.describe()["images_per_class"]["Abyssinian"] == {"train": 4, "val": 3, "test": PETS_SMALL_TRAINVAL}
    assert "capped so that training keeps at least as many" in caplog.text and "Abyssinian (7 images: val 3, train 4)" in caplog.text
    assert "train 12 (per class min 4, median 4, max 4); val 9 (per class min 3, median 3, max 3)" in caplog.text


# -- the test set is never silently changed ---------------------------------------------------


def test_a_test_image_that_does_not_decode_is_excluded_and_counted_never_replaced(pets_small_copy):
    test_ids = annotation_ids(pets_small_copy, "test")
    victim = f"images/{test_ids[0]}.jpg"
    truncate_file(pets_small_copy / "oxford-iiit-pet" / victim)
    dm = pets(pets_small_copy, batch_size=4, preprocessing=Preprocessing(32, 36))
    test = dm.dataset("test")
    rels = [s.rel for s in test.samples]
    assert victim not in rels and len(rels) == len(set(rels)) == len(test_ids) - 1
    report = dm.split_report()
    assert report["data/test_excluded"] == 1 and report["data/test_images"] == len(test_ids) - 1
    excluded = dm.describe()["test_excluded"]
    assert [e["path"] for e in excluded] == [victim] and excluded[0]["reason"].startswith("undecodable")
    # A test epoch yields each remaining image exactly once: no image stands in for the excluded one.
    seen = [x.numpy().tobytes() for batch, _ in dm.test_dataloader() for x in batch]
    assert len(seen) == len(set(seen)) == len(test_ids) - 1


def test_files_that_break_during_the_run_are_replaced_and_counted_in_train_but_stop_the_test(pets_small_copy):
    dm = pets(pets_small_copy, batch_size=4, preprocessing=Preprocessing(32, 36), num_workers=1)
    dm.setup()
    Path(dm.dataset("train").samples[0].path).write_bytes(b"")  # broken after the split was built
    assert sum(len(y) for _, y in dm.train_dataloader()) == len(dm.dataset("train"))  # replaced: the epoch goes on
    assert dm.split_report()["data/train_replaced"] == 1  # counted, though a worker process read it
    Path(dm.dataset("test").samples[0].path).write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="never changed silently"):
        list(dm.test_dataloader())
