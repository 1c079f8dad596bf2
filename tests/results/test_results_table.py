"""Result tables: grouping, aggregation cell by cell, and the markdown/LaTeX/CSV renderings."""

from __future__ import annotations

import csv
import io
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from tlresearch.core.errors import ConfigError
from tlresearch.results.aggregate import Table, build_table, higher_is_better, is_accuracy_like
from tlresearch.results.formats import render
from tlresearch.results.grouping import default_row_keys
from tlresearch.results.records import find_runs

METRIC = "test/mean_class_acc"


def expected_cells(outcomes: dict[tuple[str, str, int], Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """What each (backbone, finetune) cell must show, computed straight from the fake metrics."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for (backbone, finetune, _seed), outcome in outcomes.items():
        cell = cells.setdefault((backbone, finetune), {"values": [], "failed": 0, "interrupted": 0, "missing": 0})
        if outcome is None or outcome == "absent":
            cell["missing"] += 1
        elif outcome["status"] == "completed":
            cell["values"].append(outcome[METRIC] * 100)
        else:
            cell[outcome["status"]] += 1
    return cells


@pytest.fixture
def table(sweep_dir: Path) -> Table:
    return build_table(find_runs([sweep_dir]), METRIC, rows=["backbone"], cols=["finetune"])


def test_cells_match_the_metrics(table: Table, fake: Any) -> None:
    expected = expected_cells(fake.SWEEP_OUTCOMES)
    assert table.rows == [("resnet50",), ("vgg16",)]
    assert table.cols == [("full",), ("linear_probe",)]
    assert table.percent and table.higher_is_better and table.decimals == 1
    for (backbone, finetune), want in expected.items():
        cell = table.cell((backbone,), (finetune,))
        assert cell.values == pytest.approx(want["values"])
        assert cell.n == len(want["values"])
        assert (cell.failed, cell.interrupted, cell.missing) == (want["failed"], want["interrupted"], want["missing"])
        assert cell.total == 3
        if want["values"]:
            assert cell.mean == pytest.approx(statistics.fmean(want["values"]))
        if len(want["values"]) > 1:
            assert cell.std == pytest.approx(statistics.stdev(want["values"]))  # sample std, ddof=1
        else:
            assert cell.std is None


def markdown_cells(text: str, row_columns: int = 1) -> dict[tuple[str, str], str]:
    """Parse a markdown table into {(row labels joined by ", ", column header): cell text}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        values = [v.strip() for v in line.strip("|").split("|")]
        for col, value in zip(header[row_columns:], values[row_columns:]):
            cells[(", ".join(values[:row_columns]), col)] = value
    return cells


def test_markdown_cell_by_cell(table: Table) -> None:
    text = render(table, "markdown")
    cells = markdown_cells(text)
    assert cells == {
        # 80, 82, 84 -> mean 82, sample std 2; below full in its row (paired by seeds 0 and 1:
        # differences -10 and -9, p = 0.03): neither bold nor marked
        ("resnet50", "finetune=linear_probe"): "82.0 ± 2.0 (n=3)",
        # 90, 91 (+ 1 failed) -> 90.5 ± 0.707; the best of its row in bold
        ("resnet50", "finetune=full"): "**90.5 ± 0.7** (n=2, 1 failed)",
        # one value: std undefined, shown as "–"; one dir without metrics.json + one absent dir;
        # the only value of its row: no bold
        ("vgg16", "finetune=linear_probe"): "70.0 ± – (n=1, 2 missing)",
        ("vgg16", "finetune=full"): "no result (n=0/3: 2 failed, 1 interrupted)",
    }
    assert "sample std (ddof=1)" in text and "in %" in text


def test_default_rows_are_the_varying_overrides_without_seed(sweep_dir: Path) -> None:
    runs = find_runs([sweep_dir])
    assert default_row_keys(runs) == ["backbone", "finetune"]
    assert default_row_keys(runs, exclude=["finetune"]) == ["backbone"]
    table = build_table(runs, METRIC)
    assert table.row_keys == ["backbone", "finetune"] and table.cols == [()]
    col = METRIC + " (%)"
    cells = markdown_cells(render(table, "markdown"), row_columns=2)
    assert cells == {
        # a single column: the best of the 3 cells with values is bold
        ("resnet50, full", col): "**90.5 ± 0.7** (n=2, 1 failed)",
        ("resnet50, linear_probe", col): "82.0 ± 2.0 (n=3)",
        ("vgg16, full", col): "no result (n=0/3: 2 failed, 1 interrupted)",
        ("vgg16, linear_probe", col): "70.0 ± – (n=1, 2 missing)",
    }
    assert not table.warnings


def test_single_failed_cell_and_mixed_cell_warning(sweep_dir: Path, fake: Any) -> None:
    runs = find_runs([sweep_dir])
    table = build_table(runs, METRIC, rows=["backbone"], cols=["seed"])
    cells = markdown_cells(render(table, "markdown"))
    assert cells[("vgg16", "seed=0")] == "70.0 ± – (n=1, 1 failed)"
    assert cells[("vgg16", "seed=1")] == "no result (n=0/2: 1 failed, 1 missing)"
    assert cells[("vgg16", "seed=2")] == "no result (n=0/2: 1 interrupted, 1 missing)"
    # backbone x seed mixes linear_probe and full runs in one cell: say so
    assert any("'finetune'" in w for w in table.warnings)
    one = build_table([r for r in runs if r.job_num == 5], METRIC, rows=[])
    assert markdown_cells(render(one, "markdown")) == {("all runs", METRIC + " (%)"): "failed (n=0/1)"}


def test_latex(table: Table) -> None:
    text = render(table, "latex")
    body = [line for line in text.splitlines() if not line.startswith("%")]
    assert body[0] == r"\begin{tabular}{lcc}" and body[1] == r"\toprule" and body[-3:-1] == [r"\bottomrule",
                                                                                             r"\end{tabular}"]
    assert body[-1].startswith(r"\par{\footnotesize Bold = highest mean per row; $^\dagger$ = not significantly")
    assert r"\midrule" in body
    assert body[2] == r"backbone & finetune=full & finetune=linear\_probe \\"
    assert body[4] == (r"resnet50 & \textbf{90.5 $\pm$ 0.7} {\footnotesize (n=2, 1 failed)} & "
                       r"82.0 $\pm$ 2.0 \\")
    assert body[5] == (r"vgg16 & no result (n=0/3: 2 failed, 1 interrupted) & "
                       r"70.0 $\pm$ -- {\footnotesize (n=1, 2 missing)} \\")
    for line in body[:-1]:
        assert not re.search(r"(?<!\\)[_%#$]", line.replace("$\\pm$", "")), line  # every special escaped


def test_csv(table: Table, fake: Any) -> None:
    rows = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    expected = expected_cells(fake.SWEEP_OUTCOMES)
    assert len(rows) == 4
    for row in rows:
        want = expected[(row["backbone"], row["finetune"])]
        assert row["metric"] == METRIC and row["unit"] == "%"
        assert int(row["n"]) == len(want["values"])
        assert (int(row["failed"]), int(row["interrupted"]), int(row["missing"])) == (
            want["failed"], want["interrupted"], want["missing"])
        if want["values"]:
            assert float(row["mean"]) == pytest.approx(statistics.fmean(want["values"]))
        else:
            assert row["mean"] == ""
        if len(want["values"]) > 1:
            assert float(row["std"]) == pytest.approx(statistics.stdev(want["values"]))
        else:
            assert row["std"] == ""
    assert "runs" not in rows[0]


def test_show_runs_traces_every_cell_to_its_runs(sweep_dir: Path, table: Table) -> None:
    text = render(table, "markdown", show_runs=True)
    provenance = text.split("Runs per cell:")[1]
    for num in range(12):
        assert re.search(rf"{re.escape(str(sweep_dir.resolve() / str(num)))} \(", provenance), num
    assert "(missing: no run directory; expected by multirun.yaml: backbone=vgg16 finetune=linear_probe seed=2" \
           in provenance
    assert "(failed: RuntimeError: CUDA out of memory)" in provenance
    assert "(missing: no metrics.json)" in provenance
    assert f"{sweep_dir.resolve() / '0'} (completed) {METRIC}=80.0%" in provenance
    csv_rows = list(csv.DictReader(io.StringIO(render(table, "csv", show_runs=True))))
    assert all(len(r["runs"].split(";")) == 3 for r in csv_rows)
    assert "% Runs per cell:" in render(table, "latex", show_runs=True)


def test_percent_goal_and_decimals(sweep_dir: Path) -> None:
    runs = find_runs([sweep_dir])
    raw = build_table(runs, METRIC, rows=["backbone"], cols=["finetune"], percent=False)
    assert not raw.percent and raw.decimals == 4
    assert markdown_cells(render(raw, "markdown"))[("resnet50", "finetune=linear_probe")] == \
        "0.8200 ± 0.0200 (n=3)"
    loss = build_table(runs, "test/loss", rows=["backbone"], cols=["finetune"])
    assert not loss.percent and not loss.higher_is_better
    cells = markdown_cells(render(loss, "markdown"))
    assert cells[("resnet50", "finetune=full")] == "**0.0950 ± 0.0071** (n=2, 1 failed)"  # the lowest loss is best
    assert cells[("resnet50", "finetune=linear_probe")] == "0.1800 ± 0.0200 (n=3)"
    assert cells[("vgg16", "finetune=linear_probe")] == "0.3000 ± – (n=1, 2 missing)"
    fixed = build_table(runs, METRIC, rows=["backbone"], cols=["finetune"], decimals=2, goal="min")
    assert markdown_cells(render(fixed, "markdown"))[("resnet50", "finetune=linear_probe")] == "**82.00 ± 2.00** (n=3)"
    forced = build_table(runs, "time/fit_s", rows=["backbone"], percent=True)
    assert not forced.percent and forced.warnings


def test_metric_name_heuristics() -> None:
    assert all(is_accuracy_like(m) for m in ["test/acc", "test/top5", "val/best_mean_class_acc", "train/acc_epoch"])
    assert not any(is_accuracy_like(m) for m in ["test/loss", "time/fit_s", "params/total"])
    assert higher_is_better("test/acc") and higher_is_better("throughput/train_img_s")
    assert not higher_is_better("test/loss") and not higher_is_better("time/fit_s")


def test_ties_are_all_bold_and_empty_combinations_shown(tmp_path: Path, fake: Any) -> None:
    for name, (backbone, finetune, acc) in {"a": ("resnet50", "full", 0.9), "b": ("resnet50", "linear_probe", 0.9),
                                            "c": ("vgg16", "full", 0.5)}.items():
        fake.write_run(tmp_path / name, fake.make_config(backbone, finetune), [f"backbone={backbone}",
                       f"finetune={finetune}"], {"backbone": backbone, "finetune": finetune}, fake.completed(acc))
    table = build_table(find_runs([tmp_path]), METRIC, rows=["backbone"], cols=["finetune"])
    cells = markdown_cells(render(table, "markdown"))
    assert cells[("resnet50", "finetune=full")] == cells[("resnet50", "finetune=linear_probe")] == "**90.0 ± –** (n=1)"
    assert cells[("vgg16", "finetune=full")] == "50.0 ± – (n=1)"  # the only value of its row: no bold
    assert cells[("vgg16", "finetune=linear_probe")] == "—"  # never run: an empty cell
    assert render(table, "latex").count("--") >= 1
    assert len(list(csv.DictReader(io.StringIO(render(table, "csv"))))) == 3  # the empty cell is not a CSV row


def test_no_warning_when_an_override_equals_the_default(tmp_path: Path, fake: Any) -> None:
    fake.write_run(tmp_path / "a", fake.make_config(seed=0), ["seed=0", "optimizer.lr=0.01"], {}, fake.completed(0.5))
    fake.write_run(tmp_path / "b", fake.make_config(seed=1), ["seed=1"], {}, fake.completed(0.6))
    table = build_table(find_runs([tmp_path]), METRIC)
    assert table.row_keys == [] and not table.warnings
    assert markdown_cells(render(table, "markdown")) == {("all runs", METRIC + " (%)"): "55.0 ± 7.1 (n=2)"}


def test_default_rows_without_overrides(tmp_path: Path, fake: Any) -> None:
    """Runs launched separately with edited configs: fall back to choices, then config leaves."""
    for name, backbone in (("a", "resnet50"), ("b", "vgg16")):
        cfg = fake.make_config(backbone, seed=ord(name))
        cfg["backbone"]["num_features"] = len(backbone)  # varies with the backbone: folded into it
        fake.write_run(tmp_path / name, cfg, [], {}, fake.completed(0.5))
    assert default_row_keys(find_runs([tmp_path])) == ["backbone"]
    fake.write_run(tmp_path / "a", fake.make_config(), [], {"data": "pets"}, fake.completed(0.5))
    fake.write_run(tmp_path / "b", fake.make_config(data="cats_dogs"), [], {"data": "cats_dogs"},
                   fake.completed(0.5))
    assert default_row_keys(find_runs([tmp_path])) == ["data"]


def test_numeric_rows_sort_numerically(tmp_path: Path, fake: Any) -> None:
    for i, lr in enumerate([0.1, 0.001, 0.01]):
        fake.write_run(tmp_path / str(i), fake.make_config(lr=lr), [f"optimizer.lr={lr}"], {}, fake.completed(0.5))
    table = build_table(find_runs([tmp_path]), METRIC)
    assert table.row_keys == ["optimizer.lr"] and table.rows == [(0.001,), (0.01,), (0.1,)]
    assert [c for c in markdown_cells(render(table, "markdown"))] == [("0.001", METRIC + " (%)"),
                                                                      ("0.01", METRIC + " (%)"),
                                                                      ("0.1", METRIC + " (%)")]


def test_errors(sweep_dir: Path) -> None:
    runs = find_runs([sweep_dir])
    with pytest.raises(ConfigError, match=r"unknown metric 'test/mean_class_ac'.*Did you mean: test/mean_class_acc"):
        build_table(runs, "test/mean_class_ac")
    with pytest.raises(ConfigError, match=r"unknown --rows key 'backbon'.*Did you mean: backbone"):
        build_table(runs, METRIC, rows=["backbon"])
    with pytest.raises(ConfigError, match=r"unknown --cols key 'finetun'"):
        build_table(runs, METRIC, cols=["finetun"])
    with pytest.raises(ConfigError, match="not numeric"):
        build_table(runs, "error")
    with pytest.raises(ConfigError, match="no runs"):
        build_table([], METRIC)
    with pytest.raises(ConfigError, match="unknown format"):
        render(build_table(runs, METRIC), "html")
