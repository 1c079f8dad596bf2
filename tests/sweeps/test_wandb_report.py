"""W&B report helpers: grouping seeds into cells, tags, the order of the predictions table,
closing runs between jobs, and the offline fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.helpers import compose_cfg
from tlresearch.results import wandb_report
from tlresearch.results.wandb_report import MAX_GROUP_CHARS, cell_group, ranked_predictions, run_tags


def test_seeds_of_a_cell_share_a_group_and_cells_differ() -> None:
    base = ["trainer.max_epochs=5", "data.root=/data/pets", "+callbacks.x._target_=a.B"]
    a0 = cell_group("pets-resnet50-full", ["seed=0", "optimizer.lr=0.1", *base])
    a1 = cell_group("pets-resnet50-full", [*base, "seed=1", "optimizer.lr=0.1"])  # order does not matter
    b0 = cell_group("pets-resnet50-full", ["seed=0", "optimizer.lr=0.01", *base])
    assert a0 == a1 == "pets-resnet50-full,optimizer.lr=0.1,trainer.max_epochs=5"
    assert b0 != a0
    assert cell_group("pets-vgg16-full", ["backbone=vgg16", "finetune=full", "seed=2"]) == "pets-vgg16-full"


def test_long_groups_are_cut_but_stay_distinct() -> None:
    long = [f"optimizer.some_long_option_{i}=value" for i in range(10)]
    first = cell_group("prefix", [*long, "optimizer.lr=0.1"])
    second = cell_group("prefix", [*long, "optimizer.lr=0.2"])
    assert len(first) == len(second) == MAX_GROUP_CHARS and first != second


def test_tags_add_experiment_and_sweep() -> None:
    context = {"choices": {"experiment": "pets_kornblith"}, "sweep_dir": "/x/outputs/train/multiruns/2024-05-01/12-00-00-000001"}
    assert run_tags(["pets", "resnet50", "pets"], context) == [
        "pets", "resnet50", "experiment:pets_kornblith", "sweep:2024-05-01/12-00-00-000001"]
    assert run_tags(["pets"], {}) == ["pets"]


def test_predictions_ranked_confident_mistakes_first() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 0, 0, 1])  # mistakes: 1 (conf 0.6), 2 (0.8), 3 (0.55)
    rows = ranked_predictions({"probs": probs, "labels": labels, "indices": torch.tensor([10, 11, 12, 13, 14])}, limit=5)
    assert [r["index"] for r in rows] == [12, 11, 13, 14, 10]  # mistakes by confidence, then correct from least sure
    assert rows[0] == {"index": 12, "label": 0, "prediction": 1, "confidence": pytest.approx(0.8),
                       "p_label": pytest.approx(0.2), "correct": False}
    assert len(ranked_predictions({"probs": probs, "labels": labels, "indices": torch.arange(5)}, limit=2)) == 2


def test_finish_open_run_marks_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeRun:
        exit_code = None

        def finish(self, exit_code: int) -> None:
            self.exit_code = exit_code

    class FakeWandb:
        run = FakeRun()

    monkeypatch.setitem(__import__("sys").modules, "wandb", FakeWandb)
    wandb_report.finish_open_wandb_run(failed=True)
    assert FakeWandb.run.exit_code == 1
    FakeWandb.run = None
    wandb_report.finish_open_wandb_run(failed=False)  # nothing open: nothing to do


def test_wandb_logger_goes_offline_without_a_key_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from hydra.utils import instantiate

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_cfg("train", ["logger=wandb", "seed=3", "optimizer.lr=0.1"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="tlresearch.runner.loggers"):
        logger = instantiate(cfg.logger.wandb)
    assert "no API key found" in caplog.text and "wandb sync" in caplog.text
    assert logger._offline
    assert logger._wandb_init["group"] == "pets-resnet50-full,optimizer.lr=0.1"  # the seed is not part of the cell
    assert logger._wandb_init["tags"] == ["pets", "resnet50", "full"]
    assert logger.prediction_rows == 100


def test_a_failing_report_marks_the_wandb_run_failed_but_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    """A finished training run stays finished when W&B logging breaks at the end."""
    from tlresearch.runner.loggers import ReportingWandbLogger

    class BrokenRun:
        exit_code = None
        config = summary = None  # .update() on None raises AttributeError, like any W&B failure

        def finish(self, exit_code: int) -> None:
            self.exit_code = exit_code

    logger = ReportingWandbLogger.__new__(ReportingWandbLogger)  # no wandb.init: the run is our stand-in
    logger._experiment = BrokenRun()
    with caplog.at_level(logging.ERROR):
        wandb_report.report_and_finish([logger], {"status": "completed", "global_step": 3}, model=None, datamodule=None)
    assert logger._experiment.exit_code == 1
    assert "end-of-run report failed" in caplog.text
