"""Splits and subsets (data/splits.py): counts, stratification, seeding, nesting."""

from __future__ import annotations

import pytest

from tlresearch.core.errors import ConfigError
from tlresearch.data.images import Sample
from tlresearch.data.splits import cap_held_out, check_fractions, split_counts, stratified_split, take_per_class


def samples(per_group: dict[str, int]) -> list[Sample]:
    out = []
    for label, (group, n) in enumerate(sorted(per_group.items())):
        out += [Sample(f"/x/{group}/{i}.jpg", f"{group}/{i}.jpg", label, group) for i in range(n)]
    return out


# -- splits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, fractions, expected",
    [
        (100, [0.1, 0.1], [10, 10]),
        (10, [0.25], [3]),  # rounds to nearest
        (3, [0.1, 0.1], [1, 1]),  # tiny class: one each, one left to train
        (2, [0.1, 0.1], [1, 0]),  # never leaves train empty
        (1, [0.5], [0]),
        (0, [0.2], [0]),
        (10, [0.0, 0.2], [0, 2]),  # a zero fraction takes nothing
    ],
)
def test_split_counts(n, fractions, expected):
    assert split_counts(n, fractions) == expected


def test_stratified_split_is_a_partition_stratified_and_seeded():
    data = samples({"a": 20, "b": 10, "c": 5})
    split = stratified_split(data, 0, fractions={"val": 0.2, "test": 0.2})
    all_rel = [s.rel for part in split.values() for s in part]
    assert sorted(all_rel) == sorted(s.rel for s in data)  # disjoint and complete
    per_group = {name: {g: sum(s.group == g for s in part) for g in "abc"} for name, part in split.items()}
    assert per_group["val"] == {"a": 4, "b": 2, "c": 1} == per_group["test"]
    assert stratified_split(data, 0, fractions={"val": 0.2, "test": 0.2}) == split
    assert stratified_split(data, 1, fractions={"val": 0.2, "test": 0.2})["val"] != split["val"]


def test_stratified_split_of_a_group_does_not_depend_on_other_groups():
    """Each group has its own RNG: adding a class leaves the others' split unchanged."""
    small = stratified_split(samples({"a": 20}), 3, fractions={"val": 0.25})
    large = stratified_split(samples({"a": 20, "z": 7}), 3, fractions={"val": 0.25})
    assert [s.rel for s in large["val"] if s.group == "a"] == [s.rel for s in small["val"]]


def test_stratified_split_per_group_never_takes_more_than_training_keeps(caplog):
    split = stratified_split(samples({"a": 30, "b": 7, "c": 100}), 0, per_group={"val": 20})
    val = {g: sum(s.group == g for s in split["val"]) for g in "abc"}
    train = {g: sum(s.group == g for s in split["train"]) for g in "abc"}
    assert val == {"a": 15, "b": 3, "c": 20}  # 7 images: 3 to val, 4 train (not 6 and 1)
    assert train == {"a": 15, "b": 4, "c": 80}
    assert "2 class(es)" in caplog.text and "b (7 images: val 3, train 4)" in caplog.text and "c (" not in caplog.text


@pytest.mark.parametrize(
    "n, counts, expected",
    [
        (7, [20], [3]),
        (100, [20], [20]),  # a class large enough keeps what was asked (Oxford-IIIT Pet's ~100 trainval per breed)
        (40, [20], [20]),
        (39, [20], [19]),
        (1, [5], [0]),
        (0, [1, 1], [0, 0]),
        (3, [1, 1], [1, 1]),
        (5, [3, 3], [2, 1]),  # the larger gives back first; of equals the later (val keeps precedence over test)
    ],
)
def test_cap_held_out(n, counts, expected):
    assert cap_held_out(n, counts) == expected


def test_carve_outs_of_every_small_class_keep_training_at_least_as_large():
    """The rule holds for every class size, by count and by fraction."""
    for n in range(0, 60):
        for held in (cap_held_out(n, [20]), cap_held_out(n, [20, 20]), split_counts(n, [0.1, 0.1]), split_counts(n, [0.5])):
            train = n - sum(held)
            assert all(count <= train for count in held), (n, held)
            assert n == 0 or train >= 1


@pytest.mark.parametrize(
    "fractions, bad_key",
    [
        ({"data.val_fraction": 0.6}, "data.val_fraction"),
        ({"data.val_fraction": 0.4, "data.test_fraction": 0.3}, "data.val_fraction"),
        ({"data.val_fraction": 0.1, "data.test_fraction": 0.5}, "data.test_fraction"),
    ],
)
def test_a_fraction_larger_than_the_training_share_is_refused(fractions, bad_key):
    with pytest.raises(ConfigError, match=rf"{bad_key}=.*more of a class than training keeps.*use at most"):
        check_fractions(fractions)


def test_fractions_within_the_training_share_are_accepted():
    assert check_fractions({"data.val_fraction": 0.5}) == {"data.val_fraction": 0.5}
    assert check_fractions({"data.val_fraction": 0.3, "data.test_fraction": 0.3})["data.test_fraction"] == 0.3


def test_take_per_class_is_deterministic_and_nested():
    data = samples({"a": 10, "b": 3})
    two, five = take_per_class(data, 2, 0), take_per_class(data, 5, 0)
    assert {s.label: sum(t.label == s.label for t in two) for s in two} == {0: 2, 1: 2}
    assert sum(s.label == 1 for s in five) == 3  # a class with fewer keeps them all
    assert set(two) <= set(five)
    assert take_per_class(data, 2, 0) == two and take_per_class(data, 2, 1) != two
