"""One command to a table: a real multirun (with W&B offline), one job made to fail, then the table CLI."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml

from tests.helpers import FAST, check_predictions, run_cli
from tests.sweeps.wandb_records import OfflineRun, offline_runs
from tlresearch.table import main as table_main

FINETUNES = ("linear_probe", "full")
SEEDS = (0, 1)
FAILING = ("full", 1)  # the grid point whose job fails


@pytest.fixture(scope="module")
def sweep(pets_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``-m finetune=linear_probe,full seed=0,1`` with logger=wandb; job (full, seed 1) raises."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    result = run_cli(
        "tlresearch.train", "-m", *FAST, "trainer.max_epochs=1", f"data.root={pets_root}", "data.val_per_class=2",
        f"finetune={','.join(FINETUNES)}", f"seed={','.join(map(str, SEEDS))}", "logger=wandb",
        "+callbacks.fail._target_=tests.sweeps.faults.FailWhen",
        "+callbacks.fail.key=${hydra:runtime.choices.finetune}-${seed}", f"+callbacks.fail.fail_on={FAILING[0]}-{FAILING[1]}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def jobs(sweep_dir: Path) -> dict[tuple[str, int], Path]:
    """Grid point (finetune, seed) -> job directory, from each job's own overrides."""
    out = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
                         if o.split("=", 1)[0] in ("finetune", "seed"))
        out[(overrides["finetune"], int(overrides["seed"]))] = job
    return out


def metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


@pytest.mark.slow
def test_every_grid_point_runs_in_its_own_directory_and_the_failure_is_recorded(sweep: Path) -> None:
    grid = jobs(sweep)
    assert set(grid) == {(f, s) for f in FINETUNES for s in SEEDS}
    assert len(set(grid.values())) == len(grid)
    for point, job in grid.items():
        record = metrics(job)
        if point == FAILING:
            assert record["status"] == "failed"
            assert record["error"] == f"PlantedFailure: planted failure for {FAILING[0]}-{FAILING[1]}"
            assert "Traceback" in record["traceback"]
            assert not (job / "predictions.csv").exists()
        else:
            assert record["status"] == "completed", record
            assert 0.0 <= record["test/mean_class_acc"] <= 1.0
            assert (job / "confusion_matrix.png").is_file() and (job / "training_curves.png").is_file()
            check_predictions(job, record)


@pytest.mark.slow
def test_table_cells_match_the_runs(sweep: Path) -> None:
    """The CSV table, cell by cell: mean, sample std, n and the failed count from the metrics.json files."""
    result = run_cli("tlresearch.table", str(sweep), "--rows", "finetune", "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = {r["finetune"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert set(rows) == set(FINETUNES)
    grid = jobs(sweep)
    for finetune in FINETUNES:
        runs = [metrics(grid[(finetune, s)]) for s in SEEDS]
        values = [100 * r["test/mean_class_acc"] for r in runs if r["status"] == "completed"]
        row = rows[finetune]
        assert row["unit"] == "%"
        assert int(row["n"]) == len(values)
        assert int(row["failed"]) == sum(r["status"] == "failed" for r in runs)
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values))
        if len(values) > 1:
            assert float(row["std"]) == pytest.approx(statistics.stdev(values))
        else:
            assert row["std"] == ""  # one run: no spread claimed
    assert (rows["full"]["n"], rows["full"]["failed"]) == ("1", "1")


@pytest.mark.slow
def test_markdown_table_shows_the_failed_run(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert table_main([str(sweep), "--rows", "finetune"]) == 0
    lines = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "(n=1, 1 failed)" in lines["full"]
    assert "(n=2)" in lines["linear_probe"]


def only_run(job: Path) -> OfflineRun:
    (run,) = offline_runs(job)
    return run


@pytest.mark.slow
def test_one_wandb_run_per_job_finished_and_grouped_by_cell(sweep: Path) -> None:
    runs = {point: only_run(job) for point, job in jobs(sweep).items()}
    assert len({r.run_id for r in runs.values()}) == len(runs)  # a new run for every job, none reused
    for (finetune, seed), run in runs.items():
        assert run.config["seed"] == seed and run.config["finetune"]["_target_"].endswith(
            {"linear_probe": "LinearProbe", "full": "FullFinetune"}[finetune])
        assert run.exit_code == (1 if (finetune, seed) == FAILING else 0)  # finished, the failure marked
        assert finetune in run.tags
    for finetune in FINETUNES:  # the seeds of one cell share a group; cells differ
        assert runs[(finetune, 0)].group == runs[(finetune, 1)].group
    assert runs[("linear_probe", 0)].group != runs[("full", 0)].group
    assert not any("seed" in r.group for r in runs.values())


@pytest.mark.slow
def test_wandb_run_files_hold_config_metrics_confusion_matrix_and_predictions(sweep: Path) -> None:
    job = jobs(sweep)[("linear_probe", 0)]
    run, record = only_run(job), metrics(job)
    assert run.config["optimizer"]["lr"] == 0.01 and run.config["data"]["root"]  # the resolved config
    assert run.config["hydra"]["choices"]["finetune"] == "linear_probe"
    assert {"train/loss_step", "train/loss_epoch", "val/mean_class_acc", "test/mean_class_acc",
            "trainer/global_step"} <= run.history_keys
    for key in ("params/trainable", "params/total", "time/fit_s", "test/mean_class_acc"):
        assert run.summary[key] == pytest.approx(record[key]), key
    assert run.summary["status"] == "completed"

    confusion = json.loads((job / "confusion_matrix.json").read_text())
    chart = run.table("media/table/test/confusion_matrix_table")
    assert chart["columns"] == ["Actual", "Predicted", "nPredictions"]
    classes = confusion["classes"]
    logged = {(a, p): n for a, p, n in chart["data"]}
    assert logged == {(classes[i], classes[j]): confusion["matrix"][i][j]
                      for i in range(len(classes)) for j in range(len(classes))}

    table = run.table("media/table/test/predictions")
    columns = table["columns"]
    rows = [dict(zip(columns, row)) for row in table["data"]]
    test_size = sum(map(sum, confusion["matrix"]))
    assert len(rows) == test_size  # fewer than prediction_rows: every test image
    assert len({r["index"] for r in rows}) == test_size
    correct = [r["correct"] for r in rows]
    assert correct == sorted(correct)  # mistakes first
    mistakes = [r["confidence"] for r in rows if not r["correct"]]
    assert mistakes == sorted(mistakes, reverse=True)  # the most confident mistake first
    assert sum(r["label"] == r["prediction"] for r in rows) == sum(confusion["matrix"][i][i] for i in range(len(classes)))
    assert all(r["file"].startswith("images/") for r in rows)
    (images,) = [paths for name, paths in run.artifact_files.items() if "predictions" in name]
    assert sum(p.startswith("media/images/") for p in images) == test_size  # one image per row
