"""Load: a sweep of many small jobs on the ``joblib`` launcher (2 worker processes), a quarter of
them failing in different ways, ends with every job's directory and its ``metrics.json`` status,
and a table that counts each cell's failures.

40 jobs by default (about 2 minutes on 2 idle cores, most of it the killed workers' retries); ``TLRESEARCH_LOAD_JOBS=N`` changes the count
(at least 8, so that each way of failing occurs)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
import yaml

from tests.helpers import FAST, run_cli
from tlresearch.table import main as table_main

JOBS = max(8, int(os.environ.get("TLRESEARCH_LOAD_JOBS") or 40))
#: seed % 8 -> the error each failing job records: a NaN loss and an exception planted by
#: tests/sweeps/faults.py:FaultBySeed, and a data root that does not exist (see the test).
FAILURES = {1: "ConfigError: The training loss became nan", 3: "ConfigError: data.root=", 5: "PlantedFailure"}


def expected_error(seed: int) -> str | None:
    """... and when seed % 16 == 7 the job's worker process is SIGKILLed (FaultBySeed), retried alone, killed again."""
    return "KilledWorker" if seed % 16 == 7 else FAILURES.get(seed % 8)


@pytest.mark.slow
def test_a_sweep_of_many_jobs_with_failures_records_every_job(folder_root: Path, tmp_path: Path, capsys) -> None:
    sweep_dir = tmp_path / "multirun"
    roots = tmp_path / "roots"  # job N reads roots/N: the dataset, or nothing there (a bad data path)
    roots.mkdir()
    for seed in range(JOBS):
        if seed % 8 != 3:
            (roots / str(seed)).symlink_to(folder_root, target_is_directory=True)
    result = run_cli(
        "tlresearch.train", "-m", *FAST, "data=folder", f"data.root={roots}/${{seed}}", "backbone.input_size=32",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "+callbacks.fault._target_=tests.sweeps.faults.FaultBySeed", "+callbacks.fault.seed=${seed}",
        f"seed=range(0,{JOBS})", f"hydra.sweep.dir={sweep_dir}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    seen = set()
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
        assert job.name == str(seed)  # its own directory: job N is seed N
        seen.add(seed)
        record = json.loads((job / "metrics.json").read_text())
        expected = expected_error(seed)
        if expected is None:
            assert record["status"] == "completed", (seed, record.get("error"))
        else:
            assert record["status"] == "failed" and record["error"].startswith(expected), (seed, record.get("error"))
        # Nothing of another job here: one log, one checkpoint folder, this job's own seed in provenance.
        assert [p.name for p in job.glob("*.log")] == ["train.log"]
        if (job / "provenance.json").is_file():
            assert json.loads((job / "provenance.json").read_text())["run"]["seed"] == seed
    assert seen == set(range(JOBS))
    assert not (sweep_dir / ".running").exists()  # the launcher's markers of running jobs are gone

    capsys.readouterr()
    table_main([str(sweep_dir), "--rows", "data", "--format", "csv"])  # data.root differs per job: one row per dataset
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1  # one cell (the seeds are its repetitions)
    failed = sum(1 for s in range(JOBS) if expected_error(s))
    assert int(rows[0]["failed"]) == failed and int(rows[0]["n"]) == JOBS - failed
