"""Hydra multirun + Lightning DDP (2 CPU processes, gloo): one directory and one W&B run per job.

Lightning re-launches ranks > 0 by re-running the command line; in a multirun that re-runs the
whole sweep (see src/tlresearch/runner/distributed.py). These tests run the real thing.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PETS_SMALL_BREEDS, PETS_SMALL_TRAINVAL
from tests.helpers import FAST, run_cli
from tests.sweeps.wandb_records import offline_runs
from tlresearch.data.generate import Generated
from tlresearch.runner.distributed import hydra_quote, module_name

DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=1"]


@pytest.mark.slow
def test_ddp_multirun_one_directory_and_one_wandb_run_per_job(pets_root: Path, tmp_path: Path) -> None:
    # The default, timestamped sweep directory (relative to the working directory): a child
    # that re-ran the sweep would create a second one.
    result = run_cli("tlresearch.train", "-m", *FAST, *DDP, f"data.root={pets_root}", "data.val_per_class=2",
                     "seed=0,1", "logger=wandb", cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").glob("*/*")
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert not (tmp_path / "outputs" / "train" / "runs").exists()  # no rank wrote a run of its own
    for job, seed in (("0", 0), ("1", 1)):
        job_dir = sweep / job
        assert f"seed={seed}" in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
        assert json.loads((job_dir / "metrics.json").read_text())["status"] == "completed"
        assert (job_dir / "train_ddp_process_1.log").is_file()  # rank 1 of this job ran in this job's directory
        (run,) = offline_runs(job_dir)  # one W&B run for both ranks
        assert run.exit_code == 0 and run.config["seed"] == seed
    assert "Test:" in result.stdout and result.stdout.count("Run directory:") == 2  # records written by rank 0 only


@pytest.mark.slow
def test_ddp_single_run_writes_one_run_directory_and_tests_each_image_once(pets_small_generated: Generated, tmp_path: Path) -> None:
    """Lightning's own re-launch for a single run: rank 1 joins the same directory and writes nothing.
    The test split has an odd number of images (3 breeds x 7), so the DistributedSampler pads
    rank 1's share with the first image again; metrics.json counts every image exactly once."""
    run_dir = tmp_path / "run"
    result = run_cli("tlresearch.train", *FAST, *DDP, f"data.root={pets_small_generated.root}", "data.val_per_class=2",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no second run directory
    assert result.stdout.count("Run directory:") == 1
    with (run_dir / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    tested = PETS_SMALL_BREEDS * PETS_SMALL_TRAINVAL
    assert len(rows) == len({r["path"] for r in rows}) == metrics["data/test_images"] == tested  # odd: padding happened
    correct = [r["label"] == r["prediction"] for r in rows]
    assert metrics["test/acc"] == pytest.approx(sum(correct) / tested)
    per_class = [sum(c for c, r in zip(correct, rows) if r["label"] == k) / PETS_SMALL_TRAINVAL for k in {r["label"] for r in rows}]
    assert metrics["test/mean_class_acc"] == pytest.approx(sum(per_class) / len(per_class))
    matrix = json.loads((run_dir / "confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == tested and sum(matrix[i][i] for i in range(len(matrix))) == sum(correct)


def test_module_name_of_a_function_run_as_main() -> None:
    from tlresearch import train

    assert module_name(train.train) == "tlresearch.train"
    main_copy = type(train.train)(train.train.__code__, {}, "train")  # as under `python -m`: __module__ '__main__'
    main_copy.__module__ = "__main__"
    assert module_name(main_copy) == "tlresearch.train"


def test_relaunch_command_is_this_job_as_a_single_run(tmp_path: Path) -> None:
    """The child command of a sweep job: the job's own overrides, its directory, no sweep."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tlresearch.runner.distributed import job_relaunch_command
    from tlresearch.runner.entry import config_dir

    job_dir = tmp_path / 'my "sweep"' / "3"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["seed=2", "finetune=full"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.name = "train"
    HydraConfig.instance().set_config(cfg)
    command, cwd = job_relaunch_command("tlresearch.train", local_rank=1)
    assert command[:3] == [sys.executable, "-m", "tlresearch.train"]
    assert command[command.index("--config-path") + 1] == str(config_dir())
    assert command[command.index("--config-name") + 1] == "train"
    assert "-m" not in command[3:] and "--multirun" not in command
    assert {"seed=2", "finetune=full"} <= set(command)
    assert f"hydra.run.dir={hydra_quote(str(job_dir))}" in command
    assert "hydra.job.name=train_ddp_process_1" in command and "hydra.output_subdir=null" in command
    assert cwd == str(tmp_path)


def test_hydra_quote_reads_back_verbatim() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for value in ('/runs/a b/c', 'C:\\runs\\a "b"/c', 'x\\"y', 'ends\\', "it's"):
        (parsed,) = OverridesParser.create().parse_overrides([f"hydra.run.dir={hydra_quote(value)}"])
        assert parsed.value() == value
