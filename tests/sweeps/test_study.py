"""The tuning protocol in one command (python -m tlresearch.study): search on validation, refit the
best setting with N seeds on train+val, test once, table."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import FAST, run_in_process
from tlresearch.core.errors import ConfigError
from tlresearch.data.generate import main as generate_main
from tlresearch.results.records import Run, find_runs, load_run
from tlresearch.results.search import Search
from tlresearch.runner.study import REFIT_PROTOCOL, refit_overrides, trainval_overrides
from tlresearch.study import main as study_main

SHARED = ("+experiment=pets_kornblith", "hparams_search=lr_wd", "backbone=resnet50", "finetune=full", "seed=0", "trainer=cpu",
          "data.val_per_class=10")
BEST = {"optimizer.lr": 0.0031622776601683794, "optimizer.weight_decay": 2.5e-05}


def fake_search(data: dict | None = None, name: str = "pets") -> Search:
    config = {"data": data if data is not None else {"val_per_class": 20}, "callbacks": {"model_checkpoint": {"monitor": "x"}}}
    trial = Run(path=Path("/s/0"), config=config, choices={"data": name, "hparams_search": "lr_wd"})
    return Search(path=Path("/s"), name="lr_wd", best_params=dict(BEST), best_value=0.7, metric="val/best_mean_class_acc",
                  trials=(trial,), overrides=SHARED, best_trial=trial)


def test_the_refit_trains_the_searched_setting_at_its_best_point_on_trainval() -> None:
    overrides = refit_overrides(fake_search(), seeds=3)
    assert overrides == [
        "+experiment=pets_kornblith", "backbone=resnet50", "finetune=full", "trainer=cpu",  # the search's, but what the refit sets
        "optimizer.lr=0.0031622776601683794", "optimizer.weight_decay=2.5e-05",  # its best point
        "data.val_per_class=0", "callbacks.model_checkpoint.monitor=null", "optimized_metric=null", "test_after_fit=true",
        "seed=0,1,2",
    ]


def test_refit_overrides_add_replace_or_are_refused() -> None:
    search = fake_search()
    assert refit_overrides(search, 1, ["trainer=gpu", *SHARED])[-3:] == ["test_after_fit=true", "trainer=gpu", "seed=0"]
    assert "trainer=cpu" not in refit_overrides(search, 1, ["trainer=gpu"])
    assert refit_overrides(search, 1, ["hydra.sweeper.n_trials=2"]) == refit_overrides(search, 1)  # the search's sweeper
    with pytest.raises(ConfigError, match="seed=5 is invalid"):
        refit_overrides(search, 2, ["seed=5"])
    with pytest.raises(ConfigError, match=r"optimizer.lr=0.1 is invalid: .*what the search chose \(optimizer.lr=0.0031622776601683794\)"):
        refit_overrides(search, 2, ["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="hparams_search=other is invalid"):
        refit_overrides(search, 2, ["hparams_search=other"])
    with pytest.raises(ConfigError, match="--seeds=0 is invalid"):
        refit_overrides(search, 0)


def test_trainval_needs_a_test_split_that_does_not_move() -> None:
    assert trainval_overrides({"val_per_class": None, "val_fraction": 0.2}, "pets") == ["data.val_per_class=0"]
    with pytest.raises(ConfigError, match="data=folder cannot refit on train\\+val: .*--no-trainval"):
        refit_overrides(fake_search({"val_fraction": 0.1, "test_fraction": 0.1}, "folder"), 2)
    assert "data.val_per_class=0" not in refit_overrides(fake_search({"val_fraction": 0.1}), 2, trainval=False)


def test_a_vtab1k_search_refits_on_its_1000_images_on_any_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for data, name in (({"subset": "vtab1k", "val_per_class": None}, "cifar10"), ({"subset": "vtab1k", "val_fraction": 0.1}, "folder")):
        overrides = refit_overrides(fake_search(data, name), 1)
        assert "data.subset=vtab1k_full" in overrides and "data.val_per_class=0" not in overrides
    # and the vtab1k recipe trains and tests with those overrides (no validation split left to check)
    root = tmp_path / "cifar10"
    assert generate_main(["cifar10", str(root)]) == 0
    refit = refit_overrides(fake_search({"subset": "vtab1k"}, "cifar10"), 1)
    argv = ["+experiment=vtab1k", "data=cifar10", f"data.root={root}", "data.download=false", "data.verify_checksums=false",
            "data.subset_train=8", "data.subset_val=4", "data.batch_size=4", "data.num_workers=0",
            "backbone=resnet18", "backbone.weights=null", "backbone.input_size=32",
            "finetune=full", "trainer.max_steps=3", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
            *(o for o in refit if o.startswith(("data.subset", "callbacks.", *REFIT_PROTOCOL))), f"hydra.run.dir={tmp_path / 'run'}"]
    code, out = run_in_process("tlresearch.train", argv, capsys)
    assert code == 0, out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test/acc" in metrics and not any(k.startswith("val/") for k in metrics)
    assert (metrics["data/train_images"], metrics["data/val_images"]) == (12, 0)  # the 8 + 4 drawn images, all trained on


def test_a_directory_without_a_search_needs_the_search_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert study_main([str(tmp_path / "study"), "backbone=resnet18"]) == 2
    assert "holds no finished search" in capsys.readouterr().err


# ---------------------------------------------------------------------------- end to end

SEEDS = 2


@pytest.fixture(scope="module")
def study(pets_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The whole protocol on generated data: a 2-trial search over an experiment with a seed axis
    (pets_freeze_schedules: finetune x seed), the refit with 2 seeds, the table."""
    out = tmp_path_factory.mktemp("study") / "search"
    argv = [str(out), "--seeds", str(SEEDS), "--rows", "finetune",
            "hparams_search=lr_wd", "hydra.sweeper.n_trials=2", "+experiment=pets_freeze_schedules", "finetune=linear_probe",
            *FAST, "trainer.max_epochs=1", f"data.root={pets_root}", "data.val_per_class=2"]
    with contextlib.redirect_stdout(io.StringIO()) as table:  # the table; the sweeps' own output goes to the terminal
        assert study_main(argv) == 0
    return out, table.getvalue()


@pytest.mark.slow
def test_the_search_never_varies_the_seed_and_never_tests(study: tuple[Path, str]) -> None:
    search_dir, _ = study
    trials = [load_run(p) for p in sorted(search_dir.iterdir()) if p.name.isdigit()]
    assert len(trials) == 2
    for trial in trials:
        assert not any(o.startswith("seed=") for o in trial.overrides), trial.overrides  # Optuna never picked one
        assert trial.config["seed"] == 0
        assert trial.status == "completed" and "val/best_mean_class_acc" in trial.metrics
        assert not any(k.startswith("test/") for k in trial.metrics)  # the test split is for the refit
    hydra_cfg = yaml.safe_load((trials[0].path / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["runtime"]["choices"]["hparams_search"] == "lr_wd"


@pytest.mark.slow
def test_the_refit_trains_the_best_point_on_trainval_with_each_seed_and_tests_once(study: tuple[Path, str]) -> None:
    search_dir, table = study
    best = yaml.safe_load((search_dir / "optimization_results.yaml").read_text())["best_params"]
    refits = find_runs([search_dir / "refit"])
    assert sorted(r.config["seed"] for r in refits) == list(range(SEEDS))
    values = []
    for run in refits:
        assert run.status == "completed", run.describe()
        assert run.config["optimizer"]["lr"] == best["optimizer.lr"]
        assert run.config["optimizer"]["weight_decay"] == best["optimizer.weight_decay"]
        assert run.config["data"]["val_per_class"] == 0 and run.choices["finetune"] == "linear_probe"
        metrics = json.loads((run.path / "metrics.json").read_text())
        assert not any(k.startswith("val/") for k in metrics)  # the validation split went back into training
        values.append(100 * metrics["test/mean_class_acc"])
    assert f"{sum(values) / len(values):.1f}" in table and f"(n={SEEDS})" in table
    assert "linear_probe" in table
