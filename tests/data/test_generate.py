"""The generator writes the real datasets' on-disk formats, with learnable content."""

from __future__ import annotations

import zipfile

import pytest
import torch
from PIL import Image
from torchvision.datasets import OxfordIIITPet

from tests.conftest import PETS_BREEDS, PETS_IMAGES_PER_BREED
from tlresearch.data.generate import generate_folder, generate_pets, main
from tlresearch.data.pets import PET_BREED_IDS


def test_pets_layout_is_the_real_one(pets_root):
    base_folder = pets_root / "oxford-iiit-pet"
    for folder in ("images", "annotations/trimaps", "annotations/xmls"):
        assert (base_folder / folder).is_dir()
    trainval = OxfordIIITPet(str(pets_root), split="trainval", target_types=["category", "binary-category"])
    test = OxfordIIITPet(str(pets_root), split="test")
    assert len(trainval) + len(test) == PETS_BREEDS * PETS_IMAGES_PER_BREED
    assert abs(len(trainval) - len(test)) <= PETS_BREEDS  # about half each, per breed
    image, (breed, species) = trainval[0]
    assert image.mode == "RGB" and breed == 0 and species == 0  # Abyssinian, a cat
    listing = (base_folder / "annotations" / "list.txt").read_text().splitlines()
    header = [line for line in listing if line.startswith("#")]
    assert header[0] == "#Image CLASS-ID SPECIES BREED ID" and len(header) == 6
    assert len(listing) - len(header) == PETS_BREEDS * PETS_IMAGES_PER_BREED
    for line in listing[len(header):]:
        image_id, class_id, species_id, breed_id = line.split()
        assert image_id.rsplit("_", 1)[0] == PET_BREED_IDS[int(class_id) - 1]
        assert species_id == ("1" if image_id[0].isupper() else "2")
        with Image.open(base_folder / "images" / f"{image_id}.jpg") as jpeg:
            assert jpeg.format == "JPEG"
    assert {line.split()[3] for line in listing[len(header):] if line.split()[2] == "2"} == {"1", "2", "3", "4"}  # dog breed ids


def test_cats_dogs_archive_is_laid_out_like_the_real_one(cats_dogs_generated):
    with zipfile.ZipFile(cats_dogs_generated.root / "kagglecatsanddogs_5340.zip") as zf:
        names = set(zf.namelist())
        assert {"CDLA-Permissive-2.0.pdf", "readme[1].txt", "PetImages/Cat/0.jpg", "PetImages/Dog/0.jpg"} <= names
        assert {"PetImages/Cat/Thumbs.db", "PetImages/Dog/Thumbs.db"} <= names
        kinds = {kind: path for path, kind in cats_dogs_generated.planted.items()}
        assert set(kinds) == {"zero-byte", "png", "gif", "exif-only", "truncated", "thumbs"}
        assert zf.getinfo(kinds["zero-byte"]).file_size == 0
        exif = zf.read(kinds["exif-only"])
        assert exif[:4] == b"\xff\xd8\xff\xe1" and b"JFIF" not in exif[:10]
        good = zf.read("PetImages/Cat/0.jpg")
        assert b"JFIF" in good[:10]
    zero_byte_per_class = {p.split("/")[1] for p, k in cats_dogs_generated.planted.items() if k == "zero-byte"}
    assert zero_byte_per_class == {"Cat", "Dog"}


def test_generation_is_deterministic(tmp_path):
    for name in ("a", "b"):
        generate_folder(tmp_path / name, classes=2, images_per_class=3, min_size=16, max_size=24, seed=7)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_cli_writes_and_prints(tmp_path, capsys):
    assert main(["pets", str(tmp_path), "--num-classes", "2", "--images-per-class", "2", "--min-size", "16", "--max-size", "20"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "trainval 2, test 2" in out and "data.num_breeds=2" in out
    assert len(list((tmp_path / "oxford-iiit-pet" / "images").glob("*.jpg"))) == 4
    with pytest.raises(SystemExit):
        main(["cats_dogs", str(tmp_path), "--num-classes", "3"])


def test_generator_rejects_impossible_requests(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_pets(tmp_path, num_classes=38)
    with pytest.raises(ValueError, match="min_size"):
        generate_folder(tmp_path, min_size=64, max_size=32)


def test_classes_are_learnable_by_a_small_cnn(tmp_path):
    """A tiny CNN, a few epochs, separates the generated classes far above chance on held-out images."""
    generate_folder(tmp_path, classes=4, images_per_class=24, layout="flat", min_size=40, max_size=56, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only fight over shared cores
    try:
        accuracy = _train_tiny_cnn(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.75  # chance is 0.25


def _train_tiny_cnn(root) -> float:
    from tlresearch.data.folder import ImageFolderDataModule
    from tlresearch.data.transforms import Preprocessing

    torch.manual_seed(0)
    dm = ImageFolderDataModule(root=str(root), num_workers=0, batch_size=16, val_fraction=0.0, test_fraction=0.25,
                               preprocessing=Preprocessing(32, 36), augment={"scale": [0.5, 1.0]})
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 4),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(4):
        for x, y in dm.train_dataloader():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in dm.test_dataloader())
    return correct / len(dm.dataset("test"))
