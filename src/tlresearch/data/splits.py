"""Splits and subsets: deterministic, stratified, and identified by a hash.

* :func:`stratified_split`: train plus held-out splits, per group (class), by fractions
  (:func:`split_counts`, checked by :func:`check_fractions`) or by a count per group;
  a carve-out never takes more images of a class than training keeps (:func:`cap_held_out`);
* :func:`take_per_class`: nested per-class subsets of the training split;
* :func:`samples_sha256`: the hash that records exactly which images a split holds.

The same samples and seed always give the same result, whatever other groups exist.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tlresearch.core.config import is_number, require
from tlresearch.core.errors import ConfigError

from .images import Sample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Mapping[str, Any]) -> dict[str, float]:
    """Validate ``{"data.val_fraction": v, ...}``: each in [0, 1), their sum < 1, and none larger
    than the share left to training (the carve-out rule of :func:`cap_held_out`, as a nominal share)."""
    checked: dict[str, float] = {}
    for key, value in fractions.items():
        valid = is_number(value) and 0 <= value < 1
        require(valid, key, value, f"use a number in [0, 1) (the share of images held out), e.g. {key}=0.1.")
        checked[key] = float(value)
    if sum(checked.values()) >= 1:
        keys = " + ".join(f"{k}={v}" for k, v in checked.items())
        raise ConfigError(
            f"{keys} = {sum(checked.values()):g} is invalid: the held-out fractions must sum to less than 1, leaving images to train on."
        )
    total = sum(checked.values())
    for key, value in checked.items():
        others = total - value
        require(
            value <= 1 - total + 1e-9, key, value,
            f"a held-out split may not take more of a class than training keeps (here {1 - total:g} of each class would train); "
            f"use at most {(1 - others) / 2:g}" + (", or lower the other fraction(s)." if others else "."),
        )
    return checked


def cap_held_out(n: int, counts: Sequence[int]) -> list[int]:
    """The carve-out rule: per class of ``n`` images, no held-out split gets more images than
    training keeps (``count <= n - sum(counts)`` for each), so at least one image trains.

    The largest held-out count (the last of equals, so val keeps precedence over test) gives one
    image back to training until the rule holds; counts already within it are returned unchanged. A class of 7 images asked for
    20 validation images gets 3 (training keeps 4), never 6 (training would keep 1).
    """
    counts = [max(0, min(int(c), n)) for c in counts]
    while counts and max(counts) > n - sum(counts):
        counts[max(range(len(counts)), key=lambda i: (counts[i], i))] -= 1
    return counts


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``n`` items each held-out split takes, within :func:`cap_held_out`'s rule.

    Rounds to nearest; a split with a non-zero fraction that rounds to nothing still gets one
    item while one is left to train on, in order (so tiny classes reach val first, then test);
    then no split may take more than training keeps (which leaves at least one to train on).
    """
    counts = [math.floor(n * f + 0.5) for f in fractions]
    for i, fraction in enumerate(fractions):
        if fraction > 0 and counts[i] == 0 and sum(counts) < n - 1:
            counts[i] = 1
    return cap_held_out(n, counts)


def _group_order(samples: Iterable[Sample], seed: int, salt: str) -> dict[str, list[Sample]]:
    """Samples per group, each group in a seeded random order.

    Each group has its own RNG, seeded from (seed, salt, group): a group's order does not depend
    on which other groups exist. Python's string seeding is stable across runs and platforms.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    for name, members in groups.items():
        members.sort(key=lambda s: s.rel)
        random.Random(f"{seed}:{salt}:{name}").shuffle(members)
    return dict(sorted(groups.items()))


def stratified_split(
    samples: Iterable[Sample],
    seed: int,
    *,
    fractions: Mapping[str, float] | None = None,
    per_group: Mapping[str, int] | None = None,
) -> dict[str, list[Sample]]:
    """Split ``samples`` into ``"train"`` plus held-out splits, stratified by ``Sample.group``.

    Held-out sizes come either from ``fractions`` (``{"val": 0.1, "test": 0.1}``, see
    :func:`split_counts`) or from ``per_group`` (``{"val": 20}`` images per group). Either way
    a group too small for its share is capped by :func:`cap_held_out` (no held-out split gets
    more of a group than training keeps) and a warning names the capped groups and their counts.
    The same samples and seed always give the same split. Each split is sorted by relative path.
    """
    names = list((fractions or per_group or {}).keys())
    out: dict[str, list[Sample]] = {"train": [], **{name: [] for name in names}}
    clamped: list[str] = []
    for group, members in _group_order(samples, seed, "split").items():
        if per_group is not None:
            counts = cap_held_out(len(members), [per_group[name] for name in names])
            if counts != [per_group[name] for name in names]:
                kept = ", ".join(f"{name} {count}" for name, count in zip(names, counts))
                clamped.append(f"{group} ({len(members)} images: {kept}, train {len(members) - sum(counts)})")
        else:
            counts = split_counts(len(members), [fractions[name] for name in names])  # type: ignore[index]
        start = 0
        for name, count in zip(names, counts):
            out[name] += members[start : start + count]
            start += count
        out["train"] += members[start:]
    if clamped:
        shown = "; ".join(clamped[:10]) + (f"; and {len(clamped) - 10} more" if len(clamped) > 10 else "")
        log.warning(
            "Too few images to hold out %s per class for %d class(es); capped so that training keeps at least as many "
            "images of a class as each held-out split: %s.", dict(per_group or {}), len(clamped), shown,
        )
    return {name: sorted(split, key=lambda s: s.rel) for name, split in out.items()}


#: ``data.subset`` values: VTAB-1k's train/val draw, and its final run on all of it.
SUBSETS = ("vtab1k", "vtab1k_full")


def vtab1k_subset(pool: Sequence[Sample], seed: int, n_train: int, n_val: int, *, full: bool) -> dict[str, list[Sample]]:
    """VTAB-1k: ``n_train`` + ``n_val`` samples drawn with ``seed`` from ``pool`` (the official
    train+val), not stratified (as VTAB). ``full``: train on all of them, no val (the final run).
    The draw is nested in ``seed`` and independent of the pool's order."""
    wanted = n_train + n_val
    if len(pool) < wanted:
        raise ConfigError(
            f"data.subset={'vtab1k_full' if full else 'vtab1k'}: the train+val pool has {len(pool)} images, fewer than "
            f"data.subset_train + data.subset_val = {wanted}. Lower them, or set data.subset=null."
        )
    drawn = sorted(pool, key=lambda s: s.rel)
    random.Random(f"{seed}:vtab1k").shuffle(drawn)
    drawn = drawn[:wanted]
    if full:
        return {"train": sorted(drawn, key=lambda s: s.rel), "val": []}
    return {"train": sorted(drawn[:n_train], key=lambda s: s.rel), "val": sorted(drawn[n_train:], key=lambda s: s.rel)}


def take_per_class(samples: Iterable[Sample], k: int, seed: int) -> list[Sample]:
    """A deterministic subset of at most ``k`` samples per label.

    Subsets are nested: for one seed, the subset for ``k`` contains the subset for any smaller ``k``.
    """
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_label[str(sample.label)].append(sample)
    chosen: list[Sample] = []
    for label, members in sorted(by_label.items()):
        members.sort(key=lambda s: s.rel)
        random.Random(f"{seed}:subset:{label}").shuffle(members)
        chosen += members[:k]
    return sorted(chosen, key=lambda s: s.rel)


def samples_sha256(samples: Iterable[Sample]) -> str:
    """sha256 of the sorted ``relative path<TAB>label`` lines: identifies exactly which data was used."""
    lines = sorted(f"{s.rel}\t{s.label}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
