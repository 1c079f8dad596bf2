"""Image-folder datasets: layouts, carved splits, bad input, and a zoo of bad images."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FOLDER_CLASSES
from tests.helpers import truncate_file
from tlresearch.core.errors import ConfigError
from tlresearch.data.folder import ImageFolderDataModule
from tlresearch.data.generate import exif_only_jpeg, generate_folder
from tlresearch.data.images import load_rgb, reason_category
from tlresearch.data.manifest import scan_images
from tlresearch.data.transforms import Preprocessing


def folder(root, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(root=str(root), **{"num_workers": 0, **kwargs})


def files_on_disk(root: Path, split: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / split).rglob("*.jpg"))


def test_split_layout_uses_the_folders_as_they_are(folder_root, folder_generated):
    dm = folder(folder_root)
    assert dm.classes == folder_generated.classes and dm.num_classes == FOLDER_CLASSES and dm.layout == "split"
    for split in ("train", "val", "test"):
        assert [s.rel for s in dm.dataset(split).samples] == files_on_disk(folder_root, split)
        for sample in dm.dataset(split).samples:
            assert dm.classes[sample.label] == sample.rel.split("/")[1]
    assert dm.describe()["num_samples"] == folder_generated.counts


@pytest.mark.parametrize("splits, carved", [(("train",), ("val", "test")), (("train", "test"), ("val",)), (("train", "val"), ("test",))])
def test_missing_splits_are_carved_from_train(tmp_path, splits, carved):
    generate_folder(tmp_path, classes=2, images_per_class=10, splits=splits, min_size=32, max_size=40)
    dm = folder(tmp_path, val_fraction=0.2, test_fraction=0.2)
    train_files = set(files_on_disk(tmp_path, "train"))
    used = Counter(s.rel for split in ("train", "val", "test") for s in dm.dataset(split).samples)
    assert set(used.values()) == {1}  # disjoint
    for split in carved:
        samples = dm.dataset(split).samples
        assert {s.rel for s in samples} <= train_files
        assert Counter(s.label for s in samples) == {0: 2, 1: 2}  # stratified: 20% of each class's train
    for split in set(splits) - {"train"}:
        assert [s.rel for s in dm.dataset(split).samples] == files_on_disk(tmp_path, split)


def test_flat_layout_is_split_by_fractions(tmp_path):
    generate_folder(tmp_path, classes=["cat", "dog", "fox"], images_per_class=10, layout="flat", min_size=32, max_size=40)
    dm = folder(tmp_path, val_fraction=0.1, test_fraction=0.3)
    assert dm.layout == "flat" and dm.classes == ["cat", "dog", "fox"]
    sizes = {split: Counter(s.label for s in dm.dataset(split).samples) for split in ("train", "val", "test")}
    assert sizes == {"train": {0: 6, 1: 6, 2: 6}, "val": {0: 1, 1: 1, 2: 1}, "test": {0: 3, 1: 3, 2: 3}}
    assert folder(tmp_path, seed=1).describe()["split_sha256"] != dm.describe()["split_sha256"]


def test_one_class_names_data_root(tmp_path):
    generate_folder(tmp_path, classes=["only"], images_per_class=4, layout="flat", min_size=32, max_size=40)
    with pytest.raises(ConfigError, match=r"data\.root=.*1 class folder.*'only'.*at least 2"):
        folder(tmp_path)


def test_no_class_folders_or_no_images_name_data_root(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.root=.*0 class folder"):
        folder(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match=r"data\.root=.*no usable images.*2 not an image"):
        folder(tmp_path).setup()


def test_a_class_without_usable_images_is_refused(tmp_path):
    generate_folder(tmp_path, classes=["a", "b"], images_per_class=4, layout="flat", min_size=32, max_size=40)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="no training images for class.*c"):
        folder(tmp_path).setup()


def test_missing_root_names_data_root(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.root=.*no such directory"):
        folder(tmp_path / "nope")


def test_val_class_unknown_to_train_is_refused(tmp_path):
    generate_folder(tmp_path, classes=2, images_per_class=5, min_size=32, max_size=40)
    (tmp_path / "val" / "stray").mkdir()
    with pytest.raises(ConfigError, match="val/ has class folder.*stray"):
        folder(tmp_path)
    shutil.rmtree(tmp_path / "train")
    with pytest.raises(ConfigError, match="no train/"):
        folder(tmp_path)


# -- the bad-image zoo ------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def build_zoo(root: Path) -> dict[str, str | None]:
    """Two classes of good images plus one of each kind of troublesome file in class ``a``.

    Returns ``relative path -> expected drop-reason category`` (None: must load as RGB).
    """
    generate_folder(root, classes=["a", "b"], images_per_class=6, layout="flat", min_size=32, max_size=40)
    colour = Image.new("RGB", (40, 30), (200, 40, 40))
    jpeg = _encode(colour, "JPEG")
    sixteen = Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16))
    files: dict[str, tuple[bytes | None, str | None]] = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "undecodable"),
        "empty.jpg": (b"", "undecodable"),
        "text.jpg": (b"hello, I am not a JPEG", "undecodable"),
        "png_named.jpg": (_encode(colour, "PNG"), None),
        "gif_named.jpg": (_encode(colour, "GIF"), None),
        "cmyk.jpg": (_encode(colour.convert("CMYK"), "JPEG"), None),
        "grey.jpg": (_encode(colour.convert("L"), "JPEG"), None),
        "sixteen_bit.png": (_encode(sixteen, "PNG"), None),
        "rgba.png": (_encode(colour.convert("RGBA"), "PNG"), None),
        "exif_only.jpg": (exif_only_jpeg(colour), None),
        "huge.png": (_encode(Image.new("RGB", (200, 200)), "PNG"), "undecodable"),  # over the lowered bomb limit
        "notes.txt": (b"a note", "not an image"),
        "Thumbs.db": (b"\xd0\xcf\x11\xe0", "not an image"),
        "folder.jpg": (None, "not an image"),  # a directory named like an image
    }
    expected = {}
    for name, (data, why) in files.items():
        path = root / "a" / name
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        expected[f"a/{name}"] = why
    (root / "stray.jpg").write_bytes(jpeg)  # outside any class folder
    expected["stray.jpg"] = "not in a class folder"
    return expected


def test_bad_image_zoo_is_decoded_or_dropped_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200x200 = 40,000 px is a "bomb"
    expected = build_zoo(tmp_path)
    dm = folder(tmp_path, batch_size=4, preprocessing=Preprocessing(32, 36), val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    dropped = {rel: reason_category(reason) for rel, reason in dm.scan().dropped}
    assert dropped == {rel: why for rel, why in expected.items() if why is not None}
    kept = {s.rel for split in ("train", "val", "test") for s in dm.dataset(split).samples}
    assert {rel for rel, why in expected.items() if why is None} <= kept
    # Every kept odd file decodes to 8-bit RGB with its real content (not clipped, not black).
    for rel in ("a/cmyk.jpg", "a/png_named.jpg", "a/gif_named.jpg", "a/rgba.png"):
        r, g, b = np.asarray(load_rgb(tmp_path / rel)).reshape(-1, 3).mean(0)
        assert r > 150 and g < 90 and b < 90, rel
    assert 150 <= np.asarray(load_rgb(tmp_path / "a/sixteen_bit.png")).mean() <= 160  # 40000 / 257 = 156
    # Iterating every loader end to end never crashes and yields every kept image once.
    total = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for x, y in loader:
            assert x.shape[1:] == (3, 32, 32) and torch.isfinite(x).all()
            total += len(y)
    assert total == len(kept)
    # Decoding in threads gives the very same verdicts, in the same order.
    threaded = scan_images(tmp_path, label_of=dm._class_of, workers=3)
    assert (threaded.kept, threaded.dropped) == (dm.scan().kept, dm.scan().dropped)


def test_a_file_broken_after_the_scan_is_replaced_by_its_own_class(tmp_path, caplog):
    generate_folder(tmp_path, classes=["a", "b"], images_per_class=6, layout="flat", min_size=32, max_size=40)
    dm = folder(tmp_path, batch_size=4, preprocessing=Preprocessing(32, 36), augment={"enabled": False})
    train = dm.dataset("train")
    victim = next(i for i, s in enumerate(train.samples) if s.label == 1)
    Path(train.samples[victim].path).write_bytes(b"")
    image, label = train[victim]
    assert label == 1 and image.shape == (3, 32, 32)
    replacement = next(i for i in range(victim + 1, len(train)) if train.samples[i].label == 1)
    assert torch.equal(image, train[replacement][0])  # the next image of the same class
    assert "using another image of the same class" in caplog.text
    assert sum(len(y) for _, y in dm.train_dataloader()) == len(train)


def test_a_test_file_broken_after_the_scan_is_excluded_not_replaced(tmp_path, caplog):
    generate_folder(tmp_path, classes=["a", "b"], images_per_class=10, layout="flat", min_size=32, max_size=40)
    before = folder(tmp_path, test_fraction=0.3).dataset("test")
    dm = folder(tmp_path, test_fraction=0.3, preprocessing=Preprocessing(32, 36))
    assert before.samples[0].rel in {rel for rel, _ in dm.scan().kept}  # the scan decoded and kept it
    truncate_file(before.samples[0].path)  # then it broke
    test = dm.dataset("test")
    assert [s.rel for s in test.samples] == [s.rel for s in before.samples[1:]]
    assert dm.split_report()["data/test_excluded"] == 1 and "excluded" in caplog.text
    assert dm.describe()["test_excluded"][0]["path"] == before.samples[0].rel
    assert sum(len(y) for _, y in dm.test_dataloader()) == len(before) - 1


def test_long_scans_report_progress(folder_root, tmp_path, caplog):
    caplog.set_level("INFO", logger="tlresearch.data.manifest")
    scan_images(folder_root, label_of=lambda rel: rel.parts[1], progress_every=10, manifest_path=tmp_path / "m.json")
    assert "scanned 10/30 files" in caplog.text and "scanned 20/30 files" in caplog.text


def test_manifest_goes_to_cache_dir_when_given(folder_root, tmp_path):
    dm = folder(folder_root, cache_dir=str(tmp_path / "cache"))
    manifest = Path(dm.describe()["manifest_path"])
    assert manifest.is_file() and tmp_path / "cache" in manifest.parents
