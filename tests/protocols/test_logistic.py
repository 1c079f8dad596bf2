"""finetune=logistic: the L-BFGS linear-evaluation protocol (Kornblith et al. 2019)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import FAST, check_predictions, compose_cfg
from tlresearch.core.errors import ConfigError
from tlresearch.data.pets import OxfordPetsDataModule
from tlresearch.evaluate import evaluate
from tlresearch.finetune.logistic import LogisticProbe, l2_grid
from tlresearch.models.classifier import load_classifier
from tlresearch.protocols.features import feature_key
from tlresearch.protocols.logistic_solver import fit_multinomial_logistic, regularization_path
from tlresearch.train import train


def objective_gradient(x, y, weight, bias, l2):
    weight = weight.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    loss = F.cross_entropy(x @ weight.t() + bias, y) + 0.5 * l2 * weight.pow(2).sum()
    loss.backward()
    return weight.grad, bias.grad


def blobs(n_per_class: int, num_classes: int = 4, dim: int = 16, spread: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=gen) * 2
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=gen)
    return x, y


def test_grid_is_the_literatures_45_log_spaced_values():
    grid = l2_grid(1e-6, 1e5, 45)
    assert len(grid) == 45 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e5)
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # log-spaced
    assert LogisticProbe().l2_path() == grid[::-1]  # solved strongest first


@pytest.mark.parametrize("l2", [1e-2, 1.0])
def test_solution_is_the_optimum_and_warm_start_reaches_it(l2):
    x, y = blobs(30)
    cold = fit_multinomial_logistic(x, y, 4, l2, tolerance=1e-7)
    g_w, g_b = objective_gradient(x, y, cold.weight, cold.bias, l2)
    assert g_w.abs().max() < 1e-4 and g_b.abs().max() < 1e-4  # stationary point of a strictly convex objective
    start = fit_multinomial_logistic(x, y, 4, l2 * 100, tolerance=1e-7)
    warm = fit_multinomial_logistic(x, y, 4, l2, init=start, tolerance=1e-7)
    torch.testing.assert_close(warm.weight, cold.weight, atol=2e-3, rtol=1e-3)
    # The penalty acts on the weights: a stronger one gives a smaller norm.
    assert start.weight.norm() < cold.weight.norm()


def test_path_chooses_a_regularisation_the_validation_split_favours():
    # The class signal hides in x0 - x1 under a large shared noise: strong regularisation
    # shrinks the weights towards the class-mean direction (x0 alone: near chance), weak
    # regularisation finds x0 - x1 (near perfect).
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    noise = 10 * torch.randn(200, generator=gen)
    x = torch.stack([(2 * y - 1) * 0.5 + noise, noise, torch.randn(200, generator=gen)], dim=1)
    train_set, val_set = (x[:100], y[:100]), (x[100:], y[100:])
    path = regularization_path(train_set, val_set, 2, l2_grid(1e-4, 1e5, 10)[::-1], tolerance=1e-7)
    scores = [p["val/mean_class_acc"] for p in path.points]
    assert scores[0] < 0.7 and max(scores) > 0.95
    assert path.points[path.best_index]["l2"] < 1.0
    assert path.best_index == scores.index(max(scores))  # the first best: ties go to stronger regularisation
    assert path.best.l2 == path.points[path.best_index]["l2"]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"l2_min": 1.0, "l2_max": 0.1}, "l2_min"),
        ({"num_l2": 0}, "num_l2"),
        ({"tolerance": -1.0}, "tolerance"),
        ({"refit": "yes"}, "refit"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"finetune.{key}"):
        LogisticProbe(**kwargs)


LOGISTIC = [*FAST, "finetune=logistic", "finetune.num_l2=5", "finetune.l2_min=1e-4", "finetune.l2_max=10", "finetune.max_iter=50",
            "data.val_per_class=2"]


@pytest.mark.slow
def test_logistic_run_writes_the_usual_records_and_a_loadable_checkpoint(pets_root, tmp_path):
    cfg = compose_cfg("train", [*LOGISTIC, f"data.root={pets_root}"], tmp_path / "run")
    metrics, objects = train(cfg)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["status"] == "completed"
    for key in ("test/acc", "test/mean_class_acc", "test/top5", "val/best_mean_class_acc", "params/trainable", "params/total",
                "time/fit_s"):
        assert key in on_disk, key
    assert min(abs(on_disk["logistic/l2"] / v - 1) for v in l2_grid(1e-4, 10, 5)) < 1e-9
    assert on_disk["logistic/num_l2"] == 5
    path = json.loads((tmp_path / "run" / "logistic_path.json").read_text())
    assert len(path["points"]) == 5 and math.isclose(path["points"][path["chosen_index"]]["l2"], on_disk["logistic/l2"])
    assert (tmp_path / "run" / "confusion_matrix.png").is_file() and (tmp_path / "run" / "training_curves.png").is_file()
    check_predictions(tmp_path / "run", on_disk, objects["datamodule"])  # every test image, as test/acc counted them

    # The checkpoint is a TransferClassifier with the fitted head: evaluating it on the images
    # (the backbone runs again, no cache) reproduces the test accuracy of the cached features.
    model = load_classifier(on_disk["best_checkpoint"])
    torch.testing.assert_close(model.head[1].weight, objects["model"].head[1].weight.cpu())
    eval_cfg = compose_cfg(
        "evaluate",
        [
            f"ckpt_path={on_disk['best_checkpoint']}",
            f"data.root={pets_root}",
            "data.num_workers=0",
            "data.val_per_class=2",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "eval",
    )
    evaluated, _ = evaluate(eval_cfg)
    n_test = len(objects["datamodule"].features("test"))
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1.01 / n_test)

    # A second protocol run (another grid) reads the features from the cache.
    cfg = compose_cfg("train", [*LOGISTIC, f"data.root={pets_root}", "finetune.num_l2=3"], tmp_path / "again")
    _, objects = train(cfg)
    assert all(s["hit"] for s in objects["datamodule"].stats.values())


@pytest.mark.slow
def test_logistic_tests_on_the_remaining_images_and_keys_the_cache_by_the_exclusions(pets_small_copy, tmp_path):
    """A test JPEG whose first bytes are overwritten (size and mtime kept, so only the exclusion
    can change the cache key): the test features hold the other images only, under a new key."""
    full = OxfordPetsDataModule(root=str(pets_small_copy), download=False, num_workers=0).dataset("test").samples
    victim = Path(full[0].path)
    stat = victim.stat()
    with open(victim, "r+b") as fh:
        fh.write(b"\0" * 16)  # no JPEG marker any more: PIL cannot identify it
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cfg = compose_cfg("train", [*LOGISTIC, f"data.root={pets_small_copy}", "finetune.num_l2=2"], tmp_path)
    metrics, objects = train(cfg)
    features = objects["datamodule"]
    assert metrics["data/test_excluded"] == 1 and len(features.features("test")) == len(full) - 1
    assert int(objects["model"].test_confusion_matrix.sum()) == len(full) - 1  # the denominator of test/acc
    assert metrics["data/train_per_class_min"] >= metrics["data/val_per_class_max"]
    unexcluded_key, _ = feature_key(features._weights_digest, full, features.spec("test"), features.backbone_info)
    assert features.stats["test"]["key"] != unexcluded_key


def test_logistic_without_a_validation_split_says_how_to_get_one(pets_root, tmp_path):
    cfg = compose_cfg("train", [*LOGISTIC, f"data.root={pets_root}", "data.val_per_class=0"], tmp_path)
    with pytest.raises(ConfigError, match="validation"):
        train(cfg)
