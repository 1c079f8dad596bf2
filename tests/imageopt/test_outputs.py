"""PNG files, labelled grids and the W&B hand-off."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tlresearch.imageopt.images import quantize_8bit
from tlresearch.imageopt.render import attack_grid, ideal_grid, log_to_wandb, magnified_perturbation, save_png


def ideal_record(target: int, seed: int) -> dict:
    return {"target": target, "target_name": f"class{target}", "seed": seed, "target_prob": 0.9, "pred_name": "class0", "hit": target == 0}


def attack_record(source: int, target: int) -> dict:
    return {
        "source_index": source, "target": target, "target_name": f"class{target}" if target >= 0 else None,
        "label_name": "class0", "clean_pred_name": "class0", "clean_prob": 0.8, "adv_pred_name": "class1",
        "adv_prob": 0.7, "linf": 4 / 255, "l2": 0.3, "success": True,
    }


def test_png_round_trip_is_exact_for_8bit_images(tmp_path):
    image = quantize_8bit(torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(0)))
    path = save_png(image, tmp_path / "a" / "x.png")
    back = torch.from_numpy(__import__("numpy").array(Image.open(path))).permute(2, 0, 1).float() / 255
    assert torch.equal(back, image)


def test_magnified_perturbation_spans_the_range_around_grey():
    source = torch.full((3, 4, 4), 0.5)
    adversarial = source.clone()
    adversarial[0, 0, 0] += 2 / 255
    shown, factor = magnified_perturbation(adversarial, source)
    assert factor == 0.5 / (2 / 255) or abs(factor - 0.5 / (2 / 255)) < 1e-3
    assert shown.max() == 1.0 and shown[1:].eq(0.5).all()
    assert magnified_perturbation(source, source)[1] == 1.0


def test_grids_are_written(tmp_path):
    images = torch.rand(4, 3, 16, 16)
    ideal = ideal_grid(images, [ideal_record(t, s) for t in (0, 1) for s in (0, 1)], tmp_path / "ideal.png")
    records = [attack_record(0, 1), attack_record(1, -1)]
    attack = attack_grid(torch.rand(2, 3, 16, 16), images[:2], records, tmp_path / "attack.png")
    for path, min_size in ((ideal, 100), (attack, 100)):
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) > min_size


class FakeRun:
    """Stands in for a wandb run: records what is logged."""

    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log(self, payload: dict) -> None:
        self.logged.append(payload)


class FakeLogger:
    """Stands in for Lightning's WandbLogger (its run is ``experiment``)."""

    def __init__(self) -> None:
        self.experiment = FakeRun()


def test_log_to_wandb_takes_a_run_or_a_lightning_logger(tmp_path):
    import wandb

    png = save_png(torch.rand(3, 8, 8), tmp_path / "grid.png")
    metrics = {"status": "completed", "attack/success_rate": 0.75, "attack/eligible": 4, "flag": True}
    for target in (FakeRun(), FakeLogger()):
        log_to_wandb(target, metrics, {"grid": png})
        run = getattr(target, "experiment", target)
        (payload,) = run.logged
        assert payload["attack/success_rate"] == 0.75 and payload["attack/eligible"] == 4
        assert "status" not in payload and "flag" not in payload
        assert isinstance(payload["imageopt/grid"], wandb.Image)


@pytest.mark.slow
def test_log_to_wandb_offline_run_stores_the_png(tmp_path):
    import wandb

    png = save_png(torch.rand(3, 8, 8), tmp_path / "grid.png")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="tlresearch-test")
    try:
        log_to_wandb(run, {"ideal/target_prob": 0.5}, {"grid": png})
    finally:
        run.finish()
    media = list((tmp_path / "wandb").glob("offline-run-*/files/media/images/imageopt/grid_*.png"))
    assert len(media) == 1
