"""The command lines a user types: evaluate, predict, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import FAST, check_predictions, compose_cfg
from tlresearch.core.errors import ConfigError
from tlresearch.data.generate import generate_folder
from tlresearch.evaluate import evaluate
from tlresearch.predict import predict
from tlresearch.train import train


@pytest.fixture(scope="module")
def trained_run(pets_root, tmp_path_factory) -> Path:
    """A tiny completed training run on the generated pets dataset."""
    out = tmp_path_factory.mktemp("trained")
    train(compose_cfg("train", [*FAST, f"data.root={pets_root}", "trainer.max_epochs=1"], out))
    return out


def test_evaluate_reproduces_the_test_metrics_of_training(trained_run, pets_root, tmp_path):
    trained = json.loads((trained_run / "metrics.json").read_text())
    cfg = compose_cfg("evaluate", [f"ckpt_path={trained['best_checkpoint']}", f"data.root={pets_root}",
                                   "data.num_workers=0", "trainer.enable_progress_bar=false"], tmp_path)
    metrics, objects = evaluate(cfg)
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert metrics["test/mean_class_acc"] == pytest.approx(trained["test/mean_class_acc"], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics and metrics["status"] == "completed"
    # Both runs list every test image once, by its path under the dataset root, with the same predictions.
    at_training = check_predictions(trained_run, trained, objects["datamodule"])
    evaluated = check_predictions(tmp_path, metrics, objects["datamodule"])
    assert evaluated.predictions.tolist() == at_training.predictions.tolist()
    for key in ("test/acc_ci_low", "test/acc_ci_high", "test/mean_class_acc_ci_low", "test/mean_class_acc_ci_high"):
        assert metrics[key] == trained[key]  # same predictions, same seed: same interval


def test_evaluate_on_the_train_split_writes_its_predictions_in_dataset_order(trained_run, pets_root, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    cfg = compose_cfg("evaluate", [f"ckpt_path={ckpt}", f"data.root={pets_root}", "split=train", "seed=3",
                                   "data.num_workers=0", "trainer.enable_progress_bar=false"], tmp_path)
    metrics, objects = evaluate(cfg)
    check_predictions(tmp_path, metrics, objects["datamodule"], split="train")  # the train loader shuffles; this one may not


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "could not be read"), (b"garbage" * 100, "could not be read"), (None, "does not exist")],
)
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content, fragment):
    ckpt = tmp_path / "model.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", "images=[x.jpg]"], tmp_path / "run")
    with pytest.raises(ConfigError, match=fragment):
        predict(cfg)


def test_predict_names_an_image_that_does_not_decode(trained_run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    cfg = compose_cfg("predict", [f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", f"images=[{bad}]"], tmp_path / "run")
    with pytest.raises(ConfigError, match="bad.jpg.*could not be decoded"):
        predict(cfg)


def test_class_names_predictions_csv_cannot_hold_are_refused_before_training(tmp_path):
    root = generate_folder(tmp_path / "data", classes=["cat|dog", "bird"], images_per_class=5, min_size=48, max_size=64).root
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={root}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"class_names=\['cat\|dog'\] is invalid: give distinct, non-empty names free of '\|'"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
