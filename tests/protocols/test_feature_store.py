"""The feature cache over time and under concurrency: one extraction per key across processes,
checksums, the LRU size limit, the lock timeout, and ``python -m tlresearch.cache``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO
from tests.protocols import cache_worker
from tests.protocols.cache_worker import job
from tlresearch import cache as cache_cli
from tlresearch.core.errors import ConfigError
from tlresearch.protocols.cache_admin import FEATURES_SUBDIR
from tlresearch.protocols.context import RunContext
from tlresearch.protocols.feature_store import FeatureCache, FeatureSet
from tlresearch.protocols.features import load_or_extract

# ------------------------------------------------------------------------ concurrent processes


@pytest.mark.slow
def test_processes_that_need_the_same_features_extract_them_once(folder_root, tmp_path):
    # Three processes, as three jobs of a sweep: two workers started here, and this test's own.
    data, cache_dir = folder_root / "train", tmp_path / "features"
    outs = [tmp_path / f"job{i}.pt" for i in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.protocols.cache_worker", str(data), str(cache_dir), str(out)],
                         cwd=REPO, stderr=subprocess.PIPE, text=True)
        for out in outs[:2]
    ]
    deadline = time.monotonic() + 120
    while not all(out.with_suffix(".ready").exists() for out in outs[:2]) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    (tmp_path / "go").touch()  # all start together: an extraction takes over 1 s, so they overlap
    cache_worker.main(data, cache_dir, outs[2])
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    assert sum(out.with_suffix(".extracted").exists() for out in outs) == 1  # one extracted, the others waited and read
    results = [torch.load(out, weights_only=True) for out in outs]
    assert sorted(r["hit"] for r in results) == [False, True, True]
    for r in results[1:]:
        assert torch.equal(r["features"], results[0]["features"]) and torch.equal(r["labels"], results[0]["labels"])
    work = job(data)
    torch.testing.assert_close(results[0]["features"], work.extract(list(range(len(work.samples)))))
    assert [e.key for e in FeatureCache(cache_dir).entries()] == [work.key]  # one entry, no stray temporary files
    assert {p.name for p in cache_dir.iterdir()} == {f"{work.key}.pt", f"{work.key}.json", "locks"}


def test_a_lock_held_too_long_is_an_error_naming_the_lock_file(tmp_path):
    holder, waiter = FeatureCache(tmp_path), FeatureCache(tmp_path, lock_timeout_h=0.1 / 3600)
    with holder.locked("k"):
        with pytest.raises(ConfigError, match="paths.cache_lock_timeout_h") as error:
            with waiter.locked("k"):
                pytest.fail("two holders of one lock")
    assert str(holder.lock_path("k")) in str(error.value)
    with waiter.locked("k"):  # released with its holder
        pass


# ------------------------------------------------------------------------ checksums


def corrupt_by_truncation(cache: FeatureCache, key: str) -> None:
    data = cache.path(key).read_bytes()
    cache.path(key).write_bytes(data[: len(data) // 2])


def corrupt_by_wrong_shape(cache: FeatureCache, key: str) -> None:
    stored = torch.load(cache.path(key), weights_only=True)
    torch.save({**stored, "features": stored["features"][:, :-1]}, cache.path(key))  # a well-formed file, one row short


@pytest.mark.parametrize("corrupt", [corrupt_by_truncation, corrupt_by_wrong_shape])
def test_a_corrupted_entry_is_rebuilt_with_a_warning_never_used(corrupt, folder_root, tmp_path, caplog):
    work = job(folder_root / "val")
    cache = FeatureCache(tmp_path)
    n = len(work.samples)
    clean, hit = load_or_extract(cache, work.key, work.description, n, work.extract, work.labels)
    assert not hit
    corrupt(cache, work.key)
    with caplog.at_level(logging.WARNING, logger="tlresearch.protocols.feature_store"):
        rebuilt, hit = load_or_extract(cache, work.key, work.description, n, work.extract, work.labels)
    assert not hit and "damaged" in caplog.text and str(cache.path(work.key)) in caplog.text
    assert torch.equal(rebuilt.features, clean.features) and torch.equal(rebuilt.labels, clean.labels)
    again, hit = load_or_extract(cache, work.key, work.description, n, lambda idx: pytest.fail("extracted again"), work.labels)
    assert hit and torch.equal(again.features, clean.features)  # the rebuilt entry is whole


# ------------------------------------------------------------------------ size limit


def entry(seed: int) -> FeatureSet:
    return FeatureSet(torch.full((1, 100, 100), float(seed)), torch.zeros(100, dtype=torch.long))  # 40 kB


def test_least_recently_used_entries_go_first_and_entries_in_use_stay(tmp_path):
    cache = FeatureCache(tmp_path, max_gb=100e3 / 1e9)  # room for two entries
    cache.save("a", entry(0), {})
    cache.save("b", entry(1), {})
    assert cache.load("a") is not None  # a hit: "a" is now used more recently than "b"
    cache.save("c", entry(2), {})
    assert [e.key for e in cache.entries()] == ["a", "c"]
    # "a" is the least recently used, but its lock is held (another process reads it): "c" goes.
    with FeatureCache(tmp_path).locked("a"):
        cache.save("d", entry(3), {})
    assert [e.key for e in cache.entries()] == ["a", "d"]
    assert torch.equal(cache.load("a").features, entry(0).features)
    # A limit smaller than the entry just written keeps that entry (and says so).
    FeatureCache(tmp_path, max_gb=1e-9).save("e", entry(4), {})
    assert [e.key for e in cache.entries()] == ["e"]


@pytest.mark.parametrize("key, value", [("cache_max_gb", 0), ("cache_max_gb", "20GB"), ("cache_lock_timeout_h", -1),
                                        ("cache_lock_timeout_h", None)])
def test_bad_limits_are_config_errors(key, value, tmp_path):
    with pytest.raises(ConfigError, match=rf"paths\.{key}=.* is invalid: use a number > 0"):
        RunContext(output_dir=tmp_path, cache_dir=tmp_path, **{key: value})
    RunContext(output_dir=tmp_path, cache_dir=tmp_path, cache_max_gb=None)  # null: no limit


# ------------------------------------------------------------------------ python -m tlresearch.cache


def test_cache_command_lists_and_clears_by_last_use(tmp_path, capsys, monkeypatch):
    cache = FeatureCache(tmp_path / FEATURES_SUBDIR)
    for key, split in (("old", "train"), ("new", "test")):
        description = {"backbone": {"name": "resnet18", "weights": "DEFAULT"}, "dataset": {"name": "pets"}, "split": split}
        cache.save(key, entry(0), description)
    meta = json.loads(cache.meta_path("old").read_text())
    cache.meta_path("old").write_text(json.dumps({**meta, "last_used": time.time() - 40 * 86400}))

    monkeypatch.setenv("TLRESEARCH_CACHE", str(tmp_path))  # the configs' paths.cache_dir
    assert cache_cli.main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split() == ["key", "backbone", "dataset", "split", "shape", "size", "last", "use"]
    assert listed[1].split()[:6] == ["new", "resnet18", "(DEFAULT)", "pets", "test", "1x100x100"]  # most recent first
    assert "40 d ago" in listed[2] and listed[3].startswith("2 entries")

    assert cache_cli.main(["clear", "--older-than", "30", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("removed old  resnet18 (DEFAULT)  pets  train")
    assert [e.key for e in cache.entries()] == ["new"]
    with cache.locked("new"):  # in use: kept
        assert cache_cli.main(["clear", "--cache-dir", str(tmp_path)]) == 0
    assert "kept new: in use" in capsys.readouterr().out
    assert cache_cli.main(["clear", "--cache-dir", str(tmp_path)]) == 0
    assert cache.entries() == [] and "Removed 1 entries" in capsys.readouterr().out
    assert cache_cli.main(["clear", "--older-than", "-1"]) == 2
    assert "--older-than=-1.0 is invalid" in capsys.readouterr().err
