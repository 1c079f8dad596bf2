"""Microsoft Cats vs Dogs on a generated archive with the real archive's bad files."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import pytest

from tests.conftest import CATS_DOGS_IMAGES_PER_CLASS
from tlresearch.core.errors import ConfigError
from tlresearch.data import manifest as scanner
from tlresearch.data.cats_dogs import CATS_DOGS_URL, CatsDogsDataModule
from tlresearch.data.images import reason_category

#: The reason each planted kind of bad file must be dropped with, per filter (None: kept).
EXPECTED_REASON = {
    "decodes": {"zero-byte": "undecodable", "truncated": "undecodable", "thumbs": "not an image",
                "png": None, "gif": None, "exif-only": None},
    "jfif": {"zero-byte": "undecodable", "truncated": "undecodable", "thumbs": "not an image",
             "png": "no JFIF header", "gif": "no JFIF header", "exif-only": "no JFIF header"},
}


def cats_dogs(root, **kwargs) -> CatsDogsDataModule:
    return CatsDogsDataModule(root=str(root), **{"num_workers": 0, "download": False, **kwargs})


def test_classes_are_known_without_any_data():
    assert CatsDogsDataModule(root="/nonexistent").classes == ["Cat", "Dog"]


@pytest.mark.parametrize("image_filter", ["decodes", "jfif"])
def test_drops_exactly_the_planted_bad_files(cats_dogs_copy, cats_dogs_generated, image_filter):
    dm = cats_dogs(cats_dogs_copy, filter=image_filter)
    dm.prepare_data()
    dm.setup()
    manifest = dm.scan()
    dropped = {f"PetImages/{rel}": reason for rel, reason in manifest.dropped}
    expected = {path: why for path, kind in cats_dogs_generated.planted.items() if (why := EXPECTED_REASON[image_filter][kind])}
    assert {path: reason_category(reason) for path, reason in dropped.items()} == expected
    kept_bad = [p for p, kind in cats_dogs_generated.planted.items() if EXPECTED_REASON[image_filter][kind] is None]
    every = [s.rel for split in ("train", "val", "test") for s in dm.dataset(split).samples]
    assert len(every) == 2 * CATS_DOGS_IMAGES_PER_CLASS + len(kept_bad) and set(kept_bad) <= set(every)
    assert dm.describe()["dropped"]["total"] == len(expected)
    # The manifest on disk says the same, with every dropped file and its reason.
    on_disk = json.loads(Path(manifest.path).read_text())
    assert on_disk["filter"] == image_filter and on_disk["num_kept"] == len(every)
    assert {f"PetImages/{d['path']}": reason_category(d["reason"]) for d in on_disk["dropped"]} == expected


def test_labels_follow_the_class_folder(cats_dogs_copy):
    dm = cats_dogs(cats_dogs_copy)
    for split in ("train", "val", "test"):
        for sample in dm.dataset(split).samples:
            assert sample.rel.split("/")[1] == dm.classes[sample.label]


def test_split_is_stratified_and_seeded(cats_dogs_copy):
    dm = cats_dogs(cats_dogs_copy, filter="jfif", val_fraction=0.2, test_fraction=0.2)
    assert [Counter(s.label for s in dm.dataset(split).samples) for split in ("val", "test")] == [{0: 2, 1: 2}] * 2
    again = cats_dogs(cats_dogs_copy, filter="jfif", val_fraction=0.2, test_fraction=0.2)
    other = cats_dogs(cats_dogs_copy, filter="jfif", val_fraction=0.2, test_fraction=0.2, seed=1)
    assert again.describe()["split_sha256"] == dm.describe()["split_sha256"] != other.describe()["split_sha256"]


def test_second_setup_reads_the_manifest_instead_of_rescanning(cats_dogs_copy, monkeypatch):
    first = cats_dogs(cats_dogs_copy)
    first.setup()

    def no_scanning(*args, **kwargs):
        raise AssertionError("rescanned although no file changed")

    monkeypatch.setattr(scanner, "check_image", no_scanning)  # the name scan_images calls
    second = cats_dogs(cats_dogs_copy)
    second.setup()
    assert second.describe() == first.describe()
    # A changed file invalidates the cache: the scan runs again.
    (cats_dogs_copy / "PetImages" / "Cat" / "0.jpg").write_bytes(b"changed")
    with pytest.raises(AssertionError, match="rescanned"):
        cats_dogs(cats_dogs_copy).setup()


def test_uses_an_extracted_folder_as_is(cats_dogs_copy):
    cats_dogs(cats_dogs_copy).setup()  # extracts
    (cats_dogs_copy / "kagglecatsanddogs_5340.zip").unlink()
    dm = cats_dogs(cats_dogs_copy)
    dm.setup()
    assert len(dm.dataset("train")) > 0
    assert (cats_dogs_copy / "CDLA-Permissive-2.0.pdf").is_file()
    assert not list(cats_dogs_copy.glob(".extract-*"))  # the temporary extraction folder is gone


def write_zip(path: Path, name: str, data: bytes = b"x", *, symlink: bool = False) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("PetImages/Cat/0.jpg", b"ok")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)


@pytest.mark.parametrize(
    "member, symlink, why",
    [("../escaped.jpg", False, "'..'"), ("/tmp/escaped.jpg", False, "absolute"), ("PetImages/Cat/link.jpg", True, "symbolic link")],
)
def test_zip_slip_members_are_refused(tmp_path, member, symlink, why):
    root = tmp_path / "root"
    root.mkdir()
    write_zip(root / "kagglecatsanddogs_5340.zip", member, b"/etc/passwd" if symlink else b"evil", symlink=symlink)
    with pytest.raises(ConfigError, match=f"member {member!r} is .*{why}"):
        cats_dogs(root).setup()
    assert not (root / "PetImages").exists() and not (tmp_path / "escaped.jpg").exists()  # nothing was written


def test_corrupt_archive_says_to_delete_it(tmp_path):
    (tmp_path / "kagglecatsanddogs_5340.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match="not a valid zip.*Delete it"):
        cats_dogs(tmp_path).setup()


def test_missing_dataset_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError) as info:
        cats_dogs(tmp_path).prepare_data()
    message = str(info.value)
    for text in (str(tmp_path / "PetImages"), str(tmp_path / "kagglecatsanddogs_5340.zip"), "data.download=true", CATS_DOGS_URL):
        assert text in message


def test_download_failure_says_there_is_no_network(tmp_path, monkeypatch):
    def no_network(url, root, filename=None, md5=None, **kwargs):
        Path(root, filename).write_bytes(b"partial")
        raise URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    with pytest.raises(ConfigError, match="no network access") as info:
        cats_dogs(tmp_path, download=True).prepare_data()
    assert CATS_DOGS_URL in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no partial download left to be mistaken for the archive


def test_download_then_extract(tmp_path, cats_dogs_generated, monkeypatch):
    def fake_download(url, root, filename=None, md5=None, **kwargs):
        assert url == CATS_DOGS_URL
        shutil.copy(cats_dogs_generated.root / "kagglecatsanddogs_5340.zip", Path(root) / filename)

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    dm = cats_dogs(tmp_path, download=True)
    dm.prepare_data()
    dm.setup()
    assert (tmp_path / "kagglecatsanddogs_5340.zip").is_file() and (tmp_path / "PetImages" / "Dog").is_dir()
    assert dm.describe()["num_samples"]["train"] > 0
