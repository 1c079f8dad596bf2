"""Shared fixtures: tiny generated datasets in the real on-disk formats (no network, ever).

Session-scoped roots are shared by every test folder; treat them as read-only. A test that
changes files (extraction, deletions, edits) works on a copy (e.g. ``cats_dogs_copy``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tlresearch.data.generate import Generated, generate_cats_dogs, generate_folder, generate_pets
from tlresearch.data.transforms import Preprocessing

pytest_plugins = ["tests.environment"]

#: Sizes of the shared datasets (tests read them from here rather than repeating numbers).
PETS_BREEDS = 6  # Abyssinian, 4 dog breeds, Bengal: both species
PETS_IMAGES_PER_BREED = 12  # 6 trainval + 6 test each
PETS_SMALL_BREEDS = 3  # pets_small: breeds with 7 trainval + 7 test images each (small classes)
PETS_SMALL_TRAINVAL = 7
CATS_DOGS_IMAGES_PER_CLASS = 10
FOLDER_CLASSES = 3
FOLDER_IMAGES_PER_CLASS = 10


@pytest.fixture(scope="session")
def pets_generated(tmp_path_factory) -> Generated:
    """Oxford-IIIT Pet layout, first 6 breeds x 12 images (64-96 px)."""
    root = tmp_path_factory.mktemp("pets")
    return generate_pets(root, num_classes=PETS_BREEDS, images_per_class=PETS_IMAGES_PER_BREED, min_size=64, max_size=96, seed=0)


@pytest.fixture(scope="session")
def pets_root(pets_generated: Generated) -> Path:
    """``data.root`` of the generated Oxford-IIIT Pet (holds ``oxford-iiit-pet/``)."""
    return pets_generated.root


@pytest.fixture(scope="session")
def pets_small_generated(tmp_path_factory) -> Generated:
    """Oxford-IIIT Pet layout with small classes: 3 breeds x (7 trainval + 7 test), 48-64 px."""
    root = tmp_path_factory.mktemp("pets_small")
    return generate_pets(root, num_classes=PETS_SMALL_BREEDS, images_per_class=2 * PETS_SMALL_TRAINVAL, min_size=48, max_size=64, seed=0)


@pytest.fixture
def pets_small_copy(pets_small_generated: Generated, tmp_path: Path) -> Path:
    """A private copy of ``pets_small`` (for tests that corrupt files); its ``data.root``."""
    root = tmp_path / "pets_small"
    shutil.copytree(pets_small_generated.root / "oxford-iiit-pet", root / "oxford-iiit-pet")
    return root


@pytest.fixture(scope="session")
def cats_dogs_generated(tmp_path_factory) -> Generated:
    """``kagglecatsanddogs_5340.zip`` with 10 good images per class plus the planted bad files."""
    root = tmp_path_factory.mktemp("cats_dogs")
    return generate_cats_dogs(root, images_per_class=CATS_DOGS_IMAGES_PER_CLASS, min_size=64, max_size=96, seed=0)


@pytest.fixture(scope="session")
def cats_dogs_root(cats_dogs_generated: Generated) -> Path:
    """``data.root`` of the generated Cats vs Dogs: the zip only, as after a download (the first
    DataModule that sets up extracts it in place)."""
    return cats_dogs_generated.root


@pytest.fixture
def cats_dogs_copy(cats_dogs_generated: Generated, tmp_path: Path) -> Path:
    """A private root holding a fresh copy of the generated zip (for tests that extract or edit)."""
    root = tmp_path / "cats_dogs"
    root.mkdir()
    shutil.copy2(cats_dogs_generated.root / "kagglecatsanddogs_5340.zip", root)
    return root


@pytest.fixture(scope="session")
def folder_generated(tmp_path_factory) -> Generated:
    """Image folder ``root/{train,val,test}/class_{0,1,2}/*.jpg``, 10 images per class (6/2/2)."""
    root = tmp_path_factory.mktemp("folder")
    return generate_folder(root, classes=FOLDER_CLASSES, images_per_class=FOLDER_IMAGES_PER_CLASS, min_size=64, max_size=96, seed=0)


@pytest.fixture(scope="session")
def folder_root(folder_generated: Generated) -> Path:
    """``data.root`` of the generated image folder."""
    return folder_generated.root


@pytest.fixture
def small_pre() -> Preprocessing:
    """A backbone-like preprocessing at 32 px, so batches are cheap."""
    return Preprocessing(crop_size=32, resize_size=36)
