"""Statistics in the table: --ci intervals, the marks of each row, --compare (paired t-test and
McNemar on predictions.csv), on hand-built run directories whose answers are known."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats

from tlresearch.results.aggregate import Table, build_table
from tlresearch.results.compare import cell_interval, compare_columns, find_column, table_marks
from tlresearch.results.formats import render
from tlresearch.results.predictions import write_predictions
from tlresearch.results.records import find_runs
from tlresearch.table import main

METRIC = "test/mean_class_acc"

# (backbone, finetune) -> per-seed test/mean_class_acc. resnet50: full is best; gradual is within
# seed noise of it (paired differences -1, 0, -1 points: t = -2, p = 0.18); linear_probe is far
# below. vgg16: one seed each, so no test can mark anything.
VALUES = {
    ("resnet50", "full"): {0: 0.80, 1: 0.82, 2: 0.81},
    ("resnet50", "gradual"): {0: 0.79, 1: 0.82, 2: 0.80},
    ("resnet50", "linear_probe"): {0: 0.60, 1: 0.61, 2: 0.63},
    ("vgg16", "full"): {0: 0.70},
    ("vgg16", "gradual"): {0: 0.75},
}
# Per seed of resnet50 (full = A, linear_probe = B): (A right & B wrong, A wrong & B right, both
# right, both wrong). Pooled: b = 6, c = 16 of 90 images, the table of Cavo et al. (2012) whose
# exact McNemar P is 0.052479 (Fagerland, Lydersen & Laake 2017, ch. 8).
DISCORDANT = {0: (2, 6, 12, 10), 1: (2, 5, 13, 10), 2: (2, 5, 14, 9)}
BOOTSTRAP = {"test/mean_class_acc_ci_low": 0.65, "test/mean_class_acc_ci_high": 0.76}  # vgg16 full's own interval


def write_correctness(run_dir: Path, correct: list[bool]) -> None:
    """A predictions.csv whose images are right exactly where ``correct`` says (two classes)."""
    probs = np.array([[0.9, 0.1] if ok else [0.2, 0.8] for ok in correct])
    write_predictions(run_dir / "predictions.csv", [f"img/{i}.jpg" for i in range(len(correct))], [0] * len(correct), probs, ["x", "y"])


def correctness_patterns(seed: int) -> tuple[list[bool], list[bool]]:
    b, c, both, neither = DISCORDANT[seed]
    pairs = [(True, False)] * b + [(False, True)] * c + [(True, True)] * both + [(False, False)] * neither
    return [a for a, _ in pairs], [b for _, b in pairs]


@pytest.fixture
def study(tmp_path: Path, fake: Any) -> Path:
    root = tmp_path / "study"
    for (backbone, finetune), values in VALUES.items():
        for seed, value in values.items():
            run = root / f"{backbone}-{finetune}-{seed}"
            extra = BOOTSTRAP if (backbone, finetune) == ("vgg16", "full") else {}
            fake.write_run(run, fake.make_config(backbone, finetune, seed=seed), [f"backbone={backbone}", f"finetune={finetune}",
                           f"seed={seed}"], {"backbone": backbone, "finetune": finetune}, fake.completed(value, **extra))
            if backbone == "resnet50" and finetune != "gradual":
                write_correctness(run, correctness_patterns(seed)[finetune == "linear_probe"])
    return root


@pytest.fixture
def table(study: Path) -> Table:
    return build_table(find_runs([study]), METRIC, rows=["backbone"], cols=["finetune"])


# --------------------------------------------------------------------------- --ci


def test_intervals_over_seeds_and_from_one_runs_bootstrap(table: Table) -> None:
    full = table.cell(("resnet50",), ("full",))
    expected = scipy.stats.t.interval(0.95, 2, loc=81.0, scale=1.0 / math.sqrt(3))  # mean 81, sample std 1
    interval = cell_interval(table, full)
    assert interval.method == "t" and (interval.low, interval.high) == pytest.approx(expected)
    single = cell_interval(table, table.cell(("vgg16",), ("full",)))
    assert (single.method, single.low, single.high) == ("bootstrap", pytest.approx(65.0), pytest.approx(76.0))
    none = cell_interval(table, table.cell(("vgg16",), ("gradual",)))
    assert none.low is None and "no test/mean_class_acc_ci_low" in none.note

    text = render(table, "markdown", ci=True)
    assert f"| **81.0 [{expected[0]:.1f}, {expected[1]:.1f}]** (n=3) |" in text
    assert "| 70.0 [65.0, 76.0] (n=1, bootstrap) |" in text
    assert "| **75.0** (n=1, no interval: one run, and its metrics.json has no test/mean_class_acc_ci_low)" in text
    assert "Student's t-interval over the seeds" in text and "percentile bootstrap over its test images" in text

    rows = {(r["backbone"], r["finetune"]): r for r in csv.DictReader(io.StringIO(render(table, "csv", ci=True)))}
    assert float(rows["resnet50", "full"]["ci_low"]) == pytest.approx(expected[0]) and rows["resnet50", "full"]["interval"] == "t"
    assert rows["vgg16", "full"]["interval"] == "bootstrap" and rows["vgg16", "gradual"]["ci_low"] == ""


# --------------------------------------------------------------------------- marks


def test_latex_marks_the_best_cell_of_each_row_and_those_not_significantly_worse(table: Table) -> None:
    marks = table_marks(table)
    assert marks.along == "row"
    assert marks.best == {(("resnet50",), ("full",)), (("vgg16",), ("gradual",))}
    assert marks.same == {(("resnet50",), ("gradual",))}  # p = 0.18 against full; linear_probe p < 0.01; vgg16: one seed
    lines = render(table, "latex").splitlines()
    resnet = next(line for line in lines if line.startswith("resnet50 &"))
    assert resnet == r"resnet50 & \textbf{81.0 $\pm$ 1.0} & 80.3 $\pm$ 1.5$^\dagger$ & 61.3 $\pm$ 1.5 \\"
    vgg = next(line for line in lines if line.startswith("vgg16 &"))
    assert r"\textbf{75.0 $\pm$ --}" in vgg and r"\dagger" not in vgg
    footnote = lines[lines.index(r"\end{tabular}") + 1]
    assert footnote.startswith(r"\par{\footnotesize Bold = highest mean per row; $^\dagger$ = not significantly different")
    assert r"paired t-test across seeds, $p \geq 0.05$" in footnote
    markdown = render(table, "markdown")
    assert "| resnet50 | **81.0 ± 1.0** (n=3) | 80.3 ± 1.5† (n=3) | 61.3 ± 1.5 (n=3) |" in markdown


def test_a_one_column_table_marks_the_best_row(study: Path) -> None:
    table = build_table(find_runs([study]), METRIC, rows=["backbone", "finetune"])
    marks = table_marks(table)
    assert marks.along == "column"
    assert marks.best == {(("resnet50", "full"), ())} and marks.same == {(("resnet50", "gradual"), ())}
    assert "bold = highest mean per column" in render(table, "markdown")


# --------------------------------------------------------------------------- --compare


def test_compare_gives_the_paired_t_test_and_mcnemar_on_pooled_images(table: Table) -> None:
    a, b = find_column(table, "full"), find_column(table, "finetune=linear_probe")
    resnet, vgg = compare_columns(table, a, b)
    assert resnet.difference == pytest.approx(61.333333 - 81.0)
    expected = scipy.stats.ttest_rel([60.0, 61.0, 63.0], [80.0, 82.0, 81.0])  # B against A, paired by seed
    assert (resnet.paired.t, resnet.paired.p, resnet.paired.n) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue), 3)
    assert (resnet.mcnemar.b, resnet.mcnemar.c, resnet.mcnemar.n) == (6, 16, 90)
    assert resnet.mcnemar.p == pytest.approx(0.052479, abs=5e-7)
    assert resnet.notes == ()
    # vgg16 has no linear_probe run: nothing to pair, and each test says so.
    assert vgg.difference is None and vgg.paired.p is None and vgg.mcnemar is None
    assert any("at least 2 seeds" in n for n in vgg.notes) and any("no seed run by both" in n for n in vgg.notes)


def test_compare_says_why_mcnemar_did_not_run(study: Path, table: Table) -> None:
    gradual = compare_columns(table, find_column(table, "full"), find_column(table, "gradual"))[0]
    assert gradual.paired.p == pytest.approx(scipy.stats.ttest_rel([79.0, 82.0, 80.0], [80.0, 82.0, 81.0]).pvalue)
    assert gradual.mcnemar is None
    (note,) = [n for n in gradual.notes if n.startswith("McNemar")]
    assert "B has no predictions.csv in" in note and "resnet50-gradual-0" in note and "re-run" in note

    write_correctness(study / "resnet50-linear_probe-1", [True] * 5)  # another test set for seed 1
    table = build_table(find_runs([study]), METRIC, rows=["backbone"], cols=["finetune"])
    other = compare_columns(table, find_column(table, "full"), find_column(table, "linear_probe"))[0]
    assert other.mcnemar is None and other.paired.p is not None
    assert any("same test images" in n and "only in A" in n for n in other.notes)

    val = build_table(find_runs([study]), "val/best_mean_class_acc", rows=["backbone"], cols=["finetune"])
    on_val = compare_columns(val, ("full",), ("linear_probe",))[0]
    assert on_val.mcnemar is None and any("predictions.csv holds test predictions" in n for n in on_val.notes)


def test_compare_cli_in_each_format(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(study), "--rows", "backbone", "--cols", "finetune", "--compare", "full", "linear_probe"]) == 0
    out = capsys.readouterr().out
    table, comparison = out.split("\n\n_test/mean_class_acc: A = finetune=full, B = finetune=linear_probe.")
    assert "| resnet50 | **81.0 ± 1.0** (n=3)" in table
    line = next(x for x in comparison.splitlines() if x.startswith("| resnet50 |"))
    p = scipy.stats.ttest_rel([60.0, 61.0, 63.0], [80.0, 82.0, 81.0])
    assert f"| -19.7 | t={p.statistic:.2f}, p={p.pvalue:.3f}, n=3 | b=6, c=16, p=0.052, images=90 |" in line
    assert "Pooling treats the (seed, image) pairs as independent" in comparison

    assert main([str(study), "--rows", "backbone", "--cols", "finetune", "--compare", "full", "linear_probe", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))  # only the comparison: one CSV
    assert [r["backbone"] for r in rows] == ["resnet50", "vgg16"]
    assert (rows[0]["a"], rows[0]["b"], rows[0]["n_seeds"], rows[0]["mcnemar_b"], rows[0]["mcnemar_c"]) == (
        "finetune=full", "finetune=linear_probe", "3", "6", "16")
    assert float(rows[0]["p_mcnemar"]) == pytest.approx(0.052479, abs=5e-7)
    assert float(rows[0]["difference"]) == pytest.approx(-19.6667, abs=1e-3)
    assert rows[1]["p_seeds"] == "" and rows[1]["mcnemar_b"] == ""

    assert main([str(study), "--rows", "backbone", "--cols", "finetune", "--compare", "full", "gradual", "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert out.count(r"\begin{tabular}") == 2 and "B has no predictions.csv" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cols", "finetune", "--compare", "full", "ful"], r"--compare column 'ful' is not a column of the table\..*Did you mean"),
        (["--compare", "full", "gradual"], "--compare compares two columns, but the table has one: choose them with --cols"),
    ],
)
def test_compare_refuses_unknown_columns(study: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main([str(study), "--rows", "backbone", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and re.search(message, err) and "Traceback" not in err


def test_pairing_needs_one_run_per_seed(study: Path, fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs of one seed in a cell (e.g. two sweeps tabulated together) cannot be paired: left out, and said."""
    fake.write_run(study / "again", fake.make_config("resnet50", "gradual", seed=0), ["backbone=resnet50", "finetune=gradual", "seed=0"],
                   {"backbone": "resnet50", "finetune": "gradual"}, fake.completed(0.5))
    assert main([str(study), "--rows", "backbone", "--cols", "finetune"]) == 0
    out, err = capsys.readouterr()
    assert "seed(s) [0] run twice in one cell left out" in err
    # gradual now pairs with full on seeds 1 and 2 only (differences 0 and -1: p = 0.5)
    assert "| resnet50 | **81.0 ± 1.0** (n=3) | 72.8 ± 15.2† (n=4) |" in out
