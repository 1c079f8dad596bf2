"""Per-image test predictions: ``predictions.csv`` in a run directory, one row per test image.

Columns ``path,label,prediction,confidence,top5`` (written by the csv module, so paths with
commas, quotes or line breaks survive): the image's path, its label and the predicted class (class
names), the top-1 probability, and the five most probable class names joined by
:data:`TOP5_SEPARATOR`. With it, any later statistic or error analysis needs no re-run.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlresearch.core.config import require
from tlresearch.core.errors import ConfigError
from tlresearch.core.files import atomic_write

COLUMNS = ("path", "label", "prediction", "confidence", "top5")
#: Joins the class names of the ``top5`` column (a class name may therefore not contain it).
TOP5_SEPARATOR = "|"
#: Rows ranked at a time: bounds the memory of the ranking (e.g. 50,000 images x 1,000 classes).
ROWS_PER_BLOCK = 4096


@dataclass(frozen=True)
class Predictions:
    """What ``predictions.csv`` holds for the statistics: ``labels[i]`` and ``predictions[i]`` are
    indices into ``class_names`` of the image ``paths[i]``."""

    paths: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray
    class_names: tuple[str, ...]

    @property
    def correct(self) -> np.ndarray:
        """Top-1 correctness per image (bool array)."""
        return self.labels == self.predictions


def check_class_names(class_names: Sequence[str]) -> None:
    """Refuse class names that ``predictions.csv`` cannot hold: empty, repeated, or containing
    :data:`TOP5_SEPARATOR`. The train task checks them before training, not after."""
    bad = sorted(n for n, count in Counter(str(n) for n in class_names).items() if not n or TOP5_SEPARATOR in n or count > 1)
    require(not bad, "class_names", bad, f"give distinct, non-empty names free of {TOP5_SEPARATOR!r} (rename those class folders).")


def write_predictions(path: str | os.PathLike, image_paths: Sequence[str | os.PathLike], labels: Sequence[int] | np.ndarray,
                      probabilities: np.ndarray, class_names: Sequence[str]) -> Path:
    """Write ``predictions.csv`` atomically: per image its ``path``, ``label`` and ``prediction``
    (class names), ``confidence`` (the top-1 probability, written to round-trip exactly) and
    ``top5`` (the min(5, C) most probable class names, most probable first, joined by
    :data:`TOP5_SEPARATOR`). ``prediction`` is the arg-max of ``probabilities`` (an [N, C] numpy
    array or CPU tensor; ties: the lower class index), i.e. the first name of ``top5``."""
    probs = np.asarray(probabilities)  # no float64 copy: an ImageNet-sized matrix is hundreds of MB
    names = [str(n) for n in class_names]
    require(probs.ndim == 2 and probs.shape[0] > 0 and np.issubdtype(probs.dtype, np.floating), "probabilities",
            f"{probs.shape} array of {probs.dtype}", "give an [N, C] float matrix, N >= 1.")
    labels_arr = np.asarray(labels)
    ok = labels_arr.ndim == 1 and np.issubdtype(labels_arr.dtype, np.integer) and (labels_arr.size == 0 or labels_arr.min() >= 0)
    require(bool(ok and labels_arr.max(initial=0) < len(names)), "labels", f"{labels_arr.shape} array of {labels_arr.dtype}",
            f"give integer class indices in [0, {len(names)}).")
    lengths = {"image_paths": len(image_paths), "labels": len(labels_arr), "probabilities": probs.shape[0]}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"Mismatched lengths {lengths}: give one entry per test image in each.")
    require(probs.shape[1] == len(names), "class_names", f"{len(names)} names", f"give one name per column ({probs.shape[1]}).")
    check_class_names(names)
    ok = np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1 and np.allclose(probs.sum(1), 1, atol=1e-2)
    require(bool(ok), "probabilities", "values that are not probabilities",
            "give softmax outputs (rows in [0, 1] summing to 1), not logits.")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            out = csv.writer(fh)
            out.writerow(COLUMNS)
            for start in range(0, len(probs), ROWS_PER_BLOCK):
                block = probs[start : start + ROWS_PER_BLOCK]
                order = np.argsort(-block, axis=1, kind="stable")[:, :5]
                for i, (top, row) in enumerate(zip(order, block), start):
                    top5 = TOP5_SEPARATOR.join(names[j] for j in top)
                    out.writerow([os.fspath(image_paths[i]), names[labels_arr[i]], names[top[0]], repr(float(row[top[0]])), top5])

    return atomic_write(path, write)


def read_predictions(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> Predictions:
    """Read a ``predictions.csv``. Labels and predictions become indices into ``class_names``
    when given (a name outside it is an error), else into the sorted names the file uses."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ConfigError(f"Cannot read {path} ({exc.strerror or exc}): point at a run's predictions.csv.") from exc
    if not rows or tuple(rows[0]) != COLUMNS:
        raise ConfigError(f"{path} is not a predictions.csv: its header must be {','.join(COLUMNS)}.")
    rows = rows[1:]
    if not rows or any(len(r) != len(COLUMNS) for r in rows):
        raise ConfigError(f"{path} is empty or has rows without {len(COLUMNS)} fields: re-run the evaluation to rewrite it.")
    used = sorted({r[1] for r in rows} | {r[2] for r in rows})
    names = tuple(class_names) if class_names is not None else tuple(used)
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in used if n not in index]
    if unknown:
        raise ConfigError(f"{path} names classes {unknown[:5]} that are not in class_names: read it with the run's class list.")
    labels, predictions = (np.array([index[r[k]] for r in rows], dtype=np.int64) for k in (1, 2))
    return Predictions(tuple(r[0] for r in rows), labels, predictions, names)
