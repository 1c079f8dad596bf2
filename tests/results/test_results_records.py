"""Reading run directories: find_runs, Run fields and statuses, Run.value, sweep grids."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tlresearch.core.errors import ConfigError
from tlresearch.results.records import Run, expand_grid, find_runs, load_run


def by_num(runs: list[Run]) -> dict[int, Run]:
    return {r.job_num: r for r in runs}


def test_sweep_statuses_and_placeholder(fake: Any, sweep_dir: Path) -> None:
    runs = find_runs([sweep_dir])
    assert len(runs) == 12  # 11 job dirs + the one combination with no dir
    runs_by_num = by_num(runs)
    for num, ((backbone, finetune, seed), outcome) in enumerate(fake.SWEEP_OUTCOMES.items()):
        run = runs_by_num[num]
        assert run.sweep_dir == sweep_dir.resolve()
        assert run.value("backbone") == backbone and run.value("finetune") == finetune and run.value("seed") == seed
        if outcome == "absent":
            assert not run.exists and run.status == "missing" and run.metrics is None
            assert run.path == sweep_dir.resolve() / str(num)
            assert run.overrides == [f"backbone={backbone}", f"finetune={finetune}", f"seed={seed}",
                                     "trainer.max_epochs=10"]
        elif outcome is None:
            assert run.exists and run.status == "missing" and run.metrics is None
        else:
            assert run.exists and run.status == outcome["status"] and run.metrics == outcome
    assert runs_by_num[5].error == "ConfigError: data.root '/nope' does not exist"
    assert runs_by_num[0].error is None


def test_run_value_resolution(sweep_dir: Path) -> None:
    run = load_run(sweep_dir / "3")
    assert run.value("backbone") == "resnet50"  # cfg.backbone.name
    assert run.value("finetune") == "full"  # cfg.finetune.name
    assert run.value("optimizer.lr") == 0.01  # a dotted config path
    assert run.value("data.name") == "pets"
    assert run.value("test/mean_class_acc") == 0.90  # a metrics key
    assert run.value("hydra/sweeper") == "basic"  # a choice
    with pytest.raises(KeyError):
        run.value("nope.nothing")
    assert not run.has("nope") and run.has("seed")


def test_group_name_differs_from_choice_and_choice_fallback(fake: Any, tmp_path: Path) -> None:
    cfg = fake.make_config("timm")
    del cfg["finetune"]  # e.g. an experiment config that is "# @package _global_" has no node
    run = load_run(fake.write_run(tmp_path / "r", cfg, ["backbone=timm", "+finetune=full"],
                             {"backbone": "timm", "finetune": "full"}, fake.completed(0.5)))
    assert run.value("backbone") == "vit_small_patch16_224"  # the node's name wins over the choice
    assert run.value("finetune") == "full"  # no node: the choice
    assert run.override_dict == {"backbone": "timm", "finetune": "full"}


def test_config_interpolations(sweep_dir: Path) -> None:
    run = load_run(sweep_dir / "0")
    assert run.config["scheduler"]["max_lr"] == 0.01  # ${optimizer.lr} resolved
    # ${hydra:...} cannot resolve outside a Hydra run: kept as written, not an error
    assert run.config["paths"]["output_dir"] == "${hydra:runtime.output_dir}"


def test_find_runs_accepts_run_dir_sweep_dir_and_parent(sweep_dir: Path, tmp_path: Path) -> None:
    single = find_runs([sweep_dir / "0"])
    assert [r.path for r in single] == [(sweep_dir / "0").resolve()]
    assert single[0].sweep_dir is None  # a job passed alone does not pull in its sweep's grid
    from_parent = find_runs([tmp_path])
    assert len(from_parent) == 12
    # the same run reached twice is counted once
    assert len(find_runs([tmp_path, sweep_dir, sweep_dir / "0"])) == 12
    assert len(find_runs([sweep_dir / "0", sweep_dir])) == 12  # job 0 is not also a "missing" placeholder


def test_find_runs_skips_nested_files_and_sorts_naturally(fake: Any, tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    for i in (10, 2, 1):
        run = fake.write_run(root / f"job{i}", fake.make_config(seed=i), [f"seed={i}"], {}, fake.completed(0.5))
        # a run dir's own sub-folders are not searched (and hold no runs)
        (run / "csv" / "version_0").mkdir(parents=True)
    (tmp_path / "outputs" / "notes").mkdir()
    (tmp_path / "outputs" / "notes" / "metrics.json").write_text("{}")  # no .hydra/: not a run
    assert [r.path.name for r in find_runs([root])] == ["job1", "job2", "job10"]


def test_missing_path_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        find_runs([tmp_path / "nope"])


def test_unreadable_and_statusless_metrics(fake: Any, tmp_path: Path) -> None:
    bad = fake.write_run(tmp_path / "bad", fake.make_config(), [], {}, None)
    (bad / "metrics.json").write_text('{"status": "compl')  # truncated
    plain = fake.write_run(tmp_path / "plain", fake.make_config(), [], {}, {"test/acc": 0.5})
    odd = fake.write_run(tmp_path / "odd", fake.make_config(), [], {}, {"status": "weird"})
    assert load_run(bad).status == "failed" and "unreadable" in load_run(bad).error
    assert load_run(plain).status == "completed"
    assert load_run(odd).status == "failed"


def test_placeholder_borrows_group_node_from_a_sibling(fake: Any, tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    fake.write_multirun_yaml(sweep, fake.make_config(), ["backbone=resnet50,timm", "seed=0,1"],
                             {"backbone": "resnet50"})
    for num, (backbone, seed) in enumerate([("resnet50", 0), ("resnet50", 1), ("timm", 0)]):
        fake.write_run(sweep / str(num), fake.make_config(backbone, seed=seed),
                       [f"backbone={backbone}", f"seed={seed}"], {"backbone": backbone}, fake.completed(0.5),
                       job_num=num)
    runs = find_runs([sweep])
    missing = [r for r in runs if not r.exists]
    assert len(missing) == 1
    # same row as its sibling, although the choice ("timm") is not the model name
    assert missing[0].value("backbone") == "vit_small_patch16_224"
    assert missing[0].value("seed") == 1
    assert missing[0].value("optimizer.lr") == 0.01
    # no job of that option ran at all: the choice stands in for the name
    (sweep / "2" / "metrics.json").unlink()
    import shutil

    shutil.rmtree(sweep / "2")
    assert {r.value("backbone") for r in find_runs([sweep]) if not r.exists} == {"timm"}


def test_grid_value_override_and_sweeper_params(fake: Any, tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": None,
               "params": {"optimizer.lr": "1e-3,1e-2"}}
    fake.write_multirun_yaml(sweep, fake.make_config(), ["seed=range(0,2)"], {}, sweeper=sweeper)
    assert expand_grid(["optimizer.lr=1e-3,1e-2", "seed=range(0,2)"]) == [
        ["optimizer.lr=0.001", "seed=0"], ["optimizer.lr=0.001", "seed=1"],
        ["optimizer.lr=0.01", "seed=0"], ["optimizer.lr=0.01", "seed=1"]]
    fake.write_run(sweep / "0", fake.make_config(lr=0.001, seed=0), ["optimizer.lr=0.001", "seed=0"], {},
                   fake.completed(0.5), job_num=0)
    runs = find_runs([sweep])
    assert [(r.exists, r.value("optimizer.lr"), r.value("seed")) for r in runs] == [
        (True, 0.001, 0), (False, 0.001, 1), (False, 0.01, 0), (False, 0.01, 1)]


def test_non_grid_sweeper_gets_no_placeholders(fake: Any, tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    fake.write_multirun_yaml(sweep, fake.make_config(), ["optimizer.lr=interval(0.001,0.1)"], {},
                        sweeper={"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"})
    fake.write_run(sweep / "0", fake.make_config(lr=0.05), ["optimizer.lr=0.05"], {}, fake.completed(0.5), job_num=0)
    assert [r.exists for r in find_runs([sweep])] == [True]


def test_unparseable_grid_warns(fake: Any, tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    fake.write_multirun_yaml(sweep, fake.make_config(), ["seed=(("], {})
    fake.write_run(sweep / "0", fake.make_config(), ["seed=0"], {}, fake.completed(0.5), job_num=0)
    with pytest.warns(UserWarning, match="cannot expand the sweep grid"):
        assert len(find_runs([sweep])) == 1


def test_real_hydra_multirun(tmp_path: Path) -> None:
    """The format assumptions hold against Hydra itself: run a tiny multirun, delete a job dir."""
    conf = tmp_path / "conf"
    (conf / "backbone").mkdir(parents=True)
    (conf / "train.yaml").write_text(textwrap.dedent("""\
        defaults:
          - backbone: resnet50
          - _self_
        seed: 0
        optimizer: {lr: 0.01}
        out: ${hydra:runtime.output_dir}
        """))
    (conf / "backbone" / "resnet50.yaml").write_text("name: resnet50\n")
    (conf / "backbone" / "timm.yaml").write_text("name: vit_small_patch16_224\n")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""\
        import json, hydra
        from hydra.core.hydra_config import HydraConfig
        @hydra.main(version_base="1.3", config_path="conf", config_name="train")
        def main(cfg):
            out = HydraConfig.get().runtime.output_dir
            metrics = {"status": "completed", "test/mean_class_acc": 0.5 + cfg.seed / 10}
            with open(out + "/metrics.json", "w") as fh:
                json.dump(metrics, fh)
        main()
        """))
    sweep = tmp_path / "multirun"
    subprocess.run([sys.executable, str(app), "-m", "backbone=resnet50,timm", "seed=range(0,2)",
                    "optimizer.lr=1e-3", f"hydra.sweep.dir={sweep}"], check=True, capture_output=True, cwd=tmp_path)
    import shutil

    shutil.rmtree(sweep / "3")  # timm, seed=1: as if the node died before Hydra wrote anything
    runs = find_runs([sweep])
    assert [(r.exists, r.status, r.value("backbone"), r.value("seed")) for r in runs] == [
        (True, "completed", "resnet50", 0), (True, "completed", "resnet50", 1),
        (True, "completed", "vit_small_patch16_224", 0), (False, "missing", "vit_small_patch16_224", 1)]
    assert runs[0].value("optimizer.lr") == 0.001
    assert runs[0].metrics == {"status": "completed", "test/mean_class_acc": 0.5}
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
