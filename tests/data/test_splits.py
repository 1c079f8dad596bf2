"""Splits and subsets (data/splits.py): counts, stratification, seeding, nesting."""

from __future__ import annotations

import pytest

from tlresearch.data.images import Sample
from tlresearch.data.splits import split_counts, stratified_split, take_per_class


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


def test_stratified_split_per_group_clamps_to_leave_one_for_training(caplog):
    split = stratified_split(samples({"a": 30, "b": 3}), 0, per_group={"val": 20})
    counts = {g: sum(s.group == g for s in split["val"]) for g in "ab"}
    assert counts == {"a": 20, "b": 2}
    assert "Too few images" in caplog.text


def test_take_per_class_is_deterministic_and_nested():
    data = samples({"a": 10, "b": 3})
    two, five = take_per_class(data, 2, 0), take_per_class(data, 5, 0)
    assert {s.label: sum(t.label == s.label for t in two) for s in two} == {0: 2, 1: 2}
    assert sum(s.label == 1 for s in five) == 3  # a class with fewer keeps them all
    assert set(two) <= set(five)
    assert take_per_class(data, 2, 0) == two and take_per_class(data, 2, 1) != two
