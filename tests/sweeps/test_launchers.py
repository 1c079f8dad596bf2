"""Launchers and sweepers as config choices: submitit (local, SLURM), Optuna."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import FAST, REPO, run_cli
from tlresearch.results.records import find_runs
from tlresearch.runner.entry import config_dir


def compose_with_hydra(overrides: list[str]):
    """The full config, ``hydra`` node included, as a multirun would compose it."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.slow
def test_submitit_local_sweep_survives_a_killed_job(pets_root: Path, tmp_path: Path) -> None:
    """Two jobs, one process each; seed 7's SIGKILLs itself when fitting starts (tests/sweeps/faults.py),
    as the out-of-memory killer would: the sweep goes on and records it as failed in its directory."""
    result = run_cli("tlresearch.train", "-m", "hydra/launcher=submitit_local", *FAST, "trainer.max_epochs=1",
                     f"data.root={pets_root}", "data.val_per_class=2", "seed=7,0",
                     "+callbacks.fault._target_=tests.sweeps.faults.FaultBySeed", "+callbacks.fault.seed=${seed}", cwd=tmp_path,
                     env={"PYTHONPATH": str(REPO)})  # the jobs import the fault from tests/
    assert result.returncode == 0, result.stderr[-3000:]
    # The default, timestamped sweep directory: every job process lands in the parent's one.
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").glob("*/*")
    assert (sweep / "multirun.yaml").is_file()
    assert len(list((sweep / ".submitit").glob("*/*_0_log.out"))) == 2  # one submitit job each
    killed, done = (json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1"))
    assert killed["status"] == "failed" and killed["error"].startswith("KilledJob:"), killed
    assert done["status"] == "completed"
    assert {r.config["seed"]: r.status for r in find_runs([sweep])} == {7: "failed", 0: "completed"}


def test_slurm_launcher_renders_one_task_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hydra/launcher=slurm with trainer=ddp: the plugin's own submission path, up to sbatch."""
    import submitit

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("srun", "sbatch"):  # submitit only checks that SLURM's tools exist
        (fake_bin / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
                              "trainer.accelerator=gpu", "trainer.devices=4", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    captured = {}

    def capture(executor, fn, *args):
        captured["executor"], captured["jobs"] = executor, list(zip(*args))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    assert len(captured["jobs"]) == 2
    script = captured["executor"]._executor._make_submission_file_text("python -m tlresearch.train", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1", "--time=240",
                 "--cpus-per-task=8", "--mem=64GB"):
        assert f"#SBATCH {line}" in script, line


def test_local_launcher_preset_composes() -> None:
    cfg = compose_with_hydra(["hydra/launcher=local"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("LocalLauncher")
    assert launcher["tasks_per_node"] == 1 and launcher["timeout_min"] == 240
    assert launcher["gpus_per_node"] == 1  # the Trainer's devices: the job sees its GPU


@pytest.mark.slow
def test_optuna_search_returns_the_validation_metric(pets_root: Path, tmp_path: Path) -> None:
    """hparams_search=lr_wd runs without -m; the best trial reported is the best metrics.json value."""
    sweep = tmp_path / "optuna"
    result = run_cli("tlresearch.train", "hparams_search=lr_wd", "hydra.sweeper.n_trials=2", *FAST,
                     "trainer.max_epochs=1", f"data.root={pets_root}", "data.val_per_class=2",
                     f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        lr, wd = float(overrides["optimizer.lr"]), float(overrides["optimizer.weight_decay"])
        assert 1e-4 <= lr <= 1e-1 and 1e-6 <= wd <= 1e-2
        trials[(lr, wd)] = json.loads((job / "metrics.json").read_text())["val/best_mean_class_acc"]
    assert len(trials) == 2  # two distinct points of the search space
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(trials.values()))
    best = (results["best_params"]["optimizer.lr"], results["best_params"]["optimizer.weight_decay"])
    assert trials[best] == pytest.approx(results["best_value"])
