"""A hyper-parameter search searches exactly its declared space: never the seed, never an axis
of an experiment's grid or of the command line (runner/search_space.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from tests.helpers import run_cli
from tlresearch.core.errors import ConfigError
from tlresearch.runner.entry import config_dir
from tlresearch.runner.search_space import exact_space

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (config_dir() / "hparams_search").glob("*.yaml"))


def declared_space(search: str) -> dict[str, str]:
    """The space a search config declares, read from its yaml file."""
    doc = yaml.safe_load((config_dir() / "hparams_search" / f"{search}.yaml").read_text())
    return {k: str(v) for k, v in doc["hydra"]["callbacks"]["search_space"]["space"].items()}


def compose_search(overrides: list[str]):
    """The composed config (``hydra`` node included) a search starts from."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def start_search(cfg) -> None:
    """What Hydra does before it builds the sweeper: every ``hydra.callbacks`` entry's ``on_multirun_start``."""
    for callback in (cfg.hydra.callbacks or {}).values():
        instantiate(callback).on_multirun_start(config=cfg, config_name="train")


def grid_of(experiment: str) -> dict[str, str]:
    """The experiment's own grid (``hydra.sweeper.params`` without a search)."""
    return {str(k): str(v) for k, v in (compose_search([f"+experiment={experiment}"]).hydra.sweeper.params or {}).items()}


def pick_one(grid: dict[str, str]) -> list[str]:
    """The first value of each grid axis but the seed: what a user fixes for one search."""
    parser = OverridesParser.create()
    picks = []
    for key, value in grid.items():
        override = parser.parse_override(f"{key}={value}")
        if key != "seed":
            picks.append(f"{key}={next(iter(override.sweep_string_iterator())) if override.is_sweep_override() else value}")
    return picks


@pytest.mark.parametrize("search", SEARCHES)
def test_each_search_config_declares_its_space_on_the_callback(search: str) -> None:
    doc = yaml.safe_load((config_dir() / "hparams_search" / f"{search}.yaml").read_text())
    assert doc["hydra"]["sweeper"]["params"] is None  # the space lives on the callback alone
    assert declared_space(search) and "seed" not in declared_space(search)
    assert doc["test_after_fit"] is False  # trials never see the test split


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_under_every_search_searches_exactly_the_declared_space(experiment: str, search: str) -> None:
    grid = grid_of(experiment)
    fixes = pick_one(grid)
    cfg = compose_search([f"+experiment={experiment}", f"hparams_search={search}", *fixes])
    if not cfg.optimized_metric:  # an experiment without validation: refused below; forced here to see the space
        cfg = compose_search([f"+experiment={experiment}", f"hparams_search={search}", *fixes,
                              "optimized_metric=val/best_mean_class_acc"])
    start_search(cfg)
    space = {str(k): str(v) for k, v in cfg.hydra.sweeper.params.items()}
    assert space == declared_space(search), (experiment, grid)
    assert "seed" not in space


def test_the_grid_merges_into_the_space_without_the_callback() -> None:
    """Why the callback exists: Hydra's merge alone puts the experiment's seed into the Optuna space."""
    cfg = compose_search(["+experiment=pets_kornblith", "hparams_search=lr_wd"])
    assert "seed" in cfg.hydra.sweeper.params


def test_an_axis_left_open_is_refused_with_a_value_to_pick(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compose_search(["+experiment=pets_kornblith", "hparams_search=lr_wd", "finetune=full"])
    with pytest.raises(SystemExit) as exit_info:
        start_search(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "backbone=vgg16,resnet50,mobilenet_v3_large is invalid under hparams_search=lr_wd" in err
    assert "Pick one value on the command line: backbone=vgg16" in err
    assert "finetune" not in err.split("Pick one")[1]  # the user fixed it


def test_a_search_without_a_validation_metric_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compose_search(["+experiment=pets_bit_hyperrule", "hparams_search=lr_wd"])
    with pytest.raises(SystemExit):
        start_search(cfg)
    assert "optimized_metric=None is invalid" in capsys.readouterr().err


LR_WD = {"optimizer.lr": "interval(0.001, 0.1)", "optimizer.weight_decay": "interval(0.0, 0.01)"}


@pytest.mark.parametrize("sweep", ["seed=0,1", "backbone=vgg16,resnet50", "finetune=choice(full,linear_probe)",
                                   "model.dropout=interval(0,0.5)"])
def test_a_command_line_sweep_outside_the_space_is_refused(sweep: str) -> None:
    key = sweep.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}=.* is invalid under hparams_search=lr_wd.*Pick one value on the command line: {key}="):
        exact_space(LR_WD, None, [sweep], "lr_wd")


def test_the_space_may_be_narrowed_and_axes_fixed_on_the_command_line() -> None:
    params = {**LR_WD, "backbone": "vgg16,resnet50", "seed": "0,1,2"}
    overrides = ["backbone=resnet50", "seed=3", "optimizer.lr=interval(0.01,0.1)"]
    assert exact_space(LR_WD, params, overrides, "lr_wd") == LR_WD


def test_a_space_that_declares_the_seed_is_refused() -> None:
    with pytest.raises(ConfigError, match="the seed is never searched"):
        exact_space({**LR_WD, "seed": "range(0,10)"}, None, [], "lr_wd")


@pytest.mark.slow
def test_search_runs_in_the_cli_exit_2_before_any_trial(tmp_path: Path) -> None:
    result = run_cli("tlresearch.train", "hparams_search=lr_wd", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "seed=0,1 is invalid under hparams_search=lr_wd" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()
