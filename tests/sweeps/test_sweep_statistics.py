"""A real multirun (2 learning rates x 2 seeds) to a table with intervals and a paired comparison."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import scipy.stats
import yaml

from tests.helpers import FAST, check_predictions, run_cli

LRS = ("0.001", "0.1")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sweep(pets_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``-m optimizer.lr=0.001,0.1 seed=0,1``: a linear probe on cached features, one epoch."""
    sweep_dir = tmp_path_factory.mktemp("stats") / "multirun"
    result = run_cli(
        "tlresearch.train", "-m", *FAST, "trainer.max_epochs=1", f"data.root={pets_root}", "data.val_per_class=2",
        "finetune=linear_probe", "data.augment.enabled=false", f"optimizer.lr={','.join(LRS)}",
        f"seed={','.join(map(str, SEEDS))}", f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def jobs(sweep_dir: Path) -> dict[tuple[str, int], Path]:
    """(lr, seed) -> job directory."""
    out = {}
    for job in (p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        out[(overrides["optimizer.lr"], int(overrides["seed"]))] = job
    return out


def correct_by_path(job: Path) -> dict[str, bool]:
    with open(job / "predictions.csv", newline="") as fh:
        return {row["path"]: row["label"] == row["prediction"] for row in csv.DictReader(fh)}


@pytest.mark.slow
def test_every_job_writes_its_predictions(sweep: Path) -> None:
    grid = jobs(sweep)
    assert set(grid) == {(lr, s) for lr in LRS for s in SEEDS}
    for job in grid.values():
        check_predictions(job, json.loads((job / "metrics.json").read_text()))


@pytest.mark.slow
def test_compare_prints_the_paired_results_of_the_multirun(sweep: Path) -> None:
    grid = jobs(sweep)
    result = run_cli("tlresearch.table", str(sweep), "--rows", "finetune", "--cols", "optimizer.lr", "--metric", "test/loss",
                     "--compare", *LRS, "--format", "csv")
    assert result.returncode == 0, result.stderr
    (row,) = csv.DictReader(io.StringIO(result.stdout))
    loss = {key: json.loads((job / "metrics.json").read_text())["test/loss"] for key, job in grid.items()}
    a, b = ([loss[(lr, s)] for s in SEEDS] for lr in LRS)
    assert (row["finetune"], row["a"], row["b"], row["n_seeds"]) == ("linear_probe", "optimizer.lr=0.001", "optimizer.lr=0.1", "2")
    assert float(row["difference"]) == pytest.approx(statistics.fmean(b) - statistics.fmean(a))
    expected = scipy.stats.ttest_rel(b, a)
    assert float(row["t"]) == pytest.approx(expected.statistic) and float(row["p_seeds"]) == pytest.approx(expected.pvalue)

    pairs = [(correct_by_path(grid[(LRS[0], s)])[path], right) for s in SEEDS for path, right in correct_by_path(grid[(LRS[1], s)]).items()]
    b_count, c_count = sum(x and not y for x, y in pairs), sum(y and not x for x, y in pairs)
    assert (int(row["mcnemar_b"]), int(row["mcnemar_c"]), int(row["n_images"])) == (b_count, c_count, len(pairs))
    p = scipy.stats.binomtest(b_count, b_count + c_count).pvalue if b_count + c_count else 1.0
    assert float(row["p_mcnemar"]) == pytest.approx(p)


@pytest.mark.slow
def test_markdown_table_with_intervals_and_comparison(sweep: Path) -> None:
    result = run_cli("tlresearch.table", str(sweep), "--rows", "finetune", "--cols", "optimizer.lr", "--ci", "--compare", *LRS)
    assert result.returncode == 0, result.stderr
    table, comparison = result.stdout.split("\n\n_test/mean_class_acc: A = optimizer.lr=0.001, B = optimizer.lr=0.1.")
    assert "Student's t-interval over the seeds" in table and table.count(" (n=2) |") == 2
    line = next(x for x in comparison.splitlines() if x.startswith("| linear_probe |"))
    assert ", n=2" in line and "images=72 |" in line  # 2 seeds paired; 2 x 36 test images paired by (seed, path)
