"""Reading a finished search: its best point, its trials, and the command line they share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tlresearch.core.errors import ConfigError
from tlresearch.results.search import read_search

SHARED = ["+experiment=pets_kornblith", "hparams_search=lr_wd", "backbone=resnet50", "data.root=/data"]
TRIALS = [(0.01, 1e-4, 0.61), (0.0031622776601683794, 2.5e-05, 0.72), (0.05, 1e-6, None)]


def write_search(fake: Any, sweep: Path, results: dict | None = None) -> Path:
    """An Optuna sweep as Hydra writes it: numbered trials (searched values first), then optimization_results.yaml."""
    for num, (lr, wd, value) in enumerate(TRIALS):
        metrics = fake.failed() if value is None else {"status": "completed", "val/best_mean_class_acc": value}
        config = {**fake.make_config(lr=lr), "optimized_metric": "val/best_mean_class_acc"}
        fake.write_run(sweep / str(num), config, [f"optimizer.lr={lr}", f"optimizer.weight_decay={wd}", *SHARED],
                       {"hparams_search": "lr_wd", "backbone": "resnet50"}, metrics, job_num=num)
    best = {"name": "optuna", "best_params": {"optimizer.lr": TRIALS[1][0], "optimizer.weight_decay": TRIALS[1][1]},
            "best_value": 0.72}
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(results or best))
    return sweep


def test_read_search_splits_the_command_line_from_the_searched_point(fake: Any, tmp_path: Path) -> None:
    search = read_search(write_search(fake, tmp_path / "search"))
    assert search.name == "lr_wd" and search.metric == "val/best_mean_class_acc" and search.best_value == 0.72
    assert search.best_params == {"optimizer.lr": 0.0031622776601683794, "optimizer.weight_decay": 2.5e-05}
    assert search.overrides == tuple(SHARED)
    assert [t.path.name for t in search.trials] == ["0", "1", "2"]
    assert search.best_trial is not None and search.best_trial.path.name == "1"


def test_a_directory_without_a_finished_search_is_refused(fake: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no finished search"):
        read_search(tmp_path)
    multi = write_search(fake, tmp_path / "multi", {"name": "optuna", "solutions": []})
    with pytest.raises(ConfigError, match="multi-objective"):
        read_search(multi)


def test_trials_of_two_searches_in_one_directory_are_refused(fake: Any, tmp_path: Path) -> None:
    sweep = write_search(fake, tmp_path / "search")
    fake.write_run(sweep / "3", fake.make_config(), ["optimizer.lr=0.1", "optimizer.weight_decay=0.1", "backbone=vgg16"],
                   {"hparams_search": "lr_wd"}, None, job_num=3)
    with pytest.raises(ConfigError, match="different settings"):
        read_search(sweep)
