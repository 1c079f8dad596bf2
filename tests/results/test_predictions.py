"""results/predictions.py: predictions.csv is written atomically, read back exactly, and refuses
what is not one."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tlresearch.core.errors import ConfigError
from tlresearch.results.predictions import TOP5_SEPARATOR, read_predictions, write_predictions

NAMES = ["cat", "dog, large", 'the "bird"', "fish", "ant", "bee", "cow"]


def softmax_rows(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    logits = rng.normal(size=(n, c))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_predictions_round_trip_with_awkward_paths(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    probs = softmax_rows(rng, 4, len(NAMES))
    paths = ["a/plain.jpg", "b/with, comma.jpg", 'c/with "quotes".jpg', "d/line\nbreak é.jpg"]
    labels = [0, 1, 2, 6]
    out = write_predictions(tmp_path / "predictions.csv", paths, labels, probs, NAMES)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "prediction", "confidence", "top5"]
    for i, row in enumerate(rows):
        order = np.argsort(-probs[i])
        assert row["path"] == paths[i] and row["label"] == NAMES[labels[i]]
        assert row["prediction"] == NAMES[order[0]]
        assert float(row["confidence"]) == probs[i, order[0]]  # round-trips exactly
        assert row["top5"].split(TOP5_SEPARATOR) == [NAMES[j] for j in order[:5]]
    back = read_predictions(out, NAMES)
    assert back.paths == tuple(paths) and back.class_names == tuple(NAMES)
    assert back.labels.tolist() == labels and back.predictions.tolist() == probs.argmax(1).tolist()
    assert back.correct.tolist() == (probs.argmax(1) == labels).tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # no temporary file left


def test_top5_lists_fewer_names_with_fewer_classes_and_ties_go_to_the_lower_index(tmp_path: Path) -> None:
    probs = np.array([[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    write_predictions(tmp_path / "p.csv", ["x", "y"], [0, 2], probs, ["a", "b", "c"])
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert [r["top5"] for r in rows] == ["b|a|c", "a|b|c"]
    assert [r["prediction"] for r in rows] == ["b", "a"]
    back = read_predictions(tmp_path / "p.csv")  # without class names: the sorted names it uses
    assert back.class_names == ("a", "b", "c") and back.labels.tolist() == [0, 2] and back.predictions.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("paths", "labels", "probs", "names", "message"),
    [
        ([], [], np.zeros((0, 2)), ["a", "b"], "N >= 1"),
        (["x", "y"], [0], np.full((2, 2), 0.5), ["a", "b"], "Mismatched lengths"),
        (["x"], [2], np.full((1, 2), 0.5), ["a", "b"], r"\[0, 2\)"),
        (["x"], [0], np.full((1, 2), 0.5), ["a"], "one name per column"),
        (["x"], [0], np.array([[2.0, -1.0]]), ["a", "b"], "not logits"),
        (["x"], [0], np.full((1, 2), 0.5), ["a", "a"], "distinct, non-empty"),
        (["x"], [0], np.full((1, 2), 0.5), ["a|b", "c"], 'free of'),
    ],
)
def test_write_predictions_refuses_bad_input(tmp_path: Path, paths, labels, probs, names, message) -> None:
    with pytest.raises(ConfigError, match=message):
        write_predictions(tmp_path / "p.csv", paths, labels, probs, names)
    assert not (tmp_path / "p.csv").exists()


def test_read_predictions_refuses_what_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read"):
        read_predictions(tmp_path / "missing.csv")
    (tmp_path / "other.csv").write_text("path,label\nx,a\n")
    with pytest.raises(ConfigError, match="header"):
        read_predictions(tmp_path / "other.csv")
    (tmp_path / "short.csv").write_text("path,label,prediction,confidence,top5\nx,a,b\n")
    with pytest.raises(ConfigError, match="fields"):
        read_predictions(tmp_path / "short.csv")
    write_predictions(tmp_path / "p.csv", ["x"], [0], np.array([[0.9, 0.1]]), ["a", "b"])
    with pytest.raises(ConfigError, match=r"\['a'\].*not in class_names"):
        read_predictions(tmp_path / "p.csv", ["b", "c"])


def test_rows_ranked_in_blocks_give_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probs = softmax_rows(np.random.default_rng(2), 7, len(NAMES)).astype(np.float32)  # as a model gives them
    paths, labels = [f"img{i}.jpg" for i in range(7)], np.arange(7) % len(NAMES)
    whole = write_predictions(tmp_path / "whole.csv", paths, labels, probs, NAMES).read_bytes()
    monkeypatch.setattr("tlresearch.results.predictions.ROWS_PER_BLOCK", 3)
    assert write_predictions(tmp_path / "blocks.csv", paths, labels, probs, NAMES).read_bytes() == whole
    back = read_predictions(tmp_path / "blocks.csv", NAMES)
    assert back.predictions.tolist() == probs.argmax(1).tolist() and back.paths == tuple(paths)
    confidence = [float(r["confidence"]) for r in csv.DictReader(open(tmp_path / "blocks.csv", newline=""))]
    assert np.array(confidence, dtype=np.float32).tolist() == probs.max(1).tolist()
