"""End to end: ``python -m tlresearch.visualize`` in one process (the CLI path run in this
interpreter) and in two DDP processes (real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import run_in_process

from .conftest import TINY_BACKBONE, run_visualize


def visualize_in_process(args: list[str], run_dir: Path, capsys) -> tuple[int, str]:
    """``python -m tlresearch.visualize ARGS`` in this process: ``(exit code, output)``."""
    return run_in_process("tlresearch.visualize", [*args, f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"], capsys)

# Three one-image jobs (uneven over two ranks), random transforms on: every image depends on
# its job's generator.
IDEAL_ARGS = [
    "task=ideal", *TINY_BACKBONE, "steps=3", "target=[tabby,zebra,2]", "batch_size=1", "ideal.transforms.enabled=true",
    "ideal.eval_transforms=2",
]


def check_completed(code: int, output: str, run_dir: Path) -> dict:
    assert code == 0, output[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    return metrics


@pytest.fixture
def ideal_run(tmp_path, capsys) -> Path:
    run_dir = tmp_path / "ideal"
    check_completed(*visualize_in_process(IDEAL_ARGS, run_dir, capsys), run_dir)
    return run_dir


def test_ideal_cli_writes_pngs_grid_and_metrics(ideal_run):
    metrics = json.loads((ideal_run / "metrics.json").read_text())
    assert metrics["task"] == "ideal" and metrics["jobs"] == 3 and metrics["ideal/images"] == 3
    for key in ("ideal/target_prob", "ideal/target_prob_transformed", "ideal/top1_hit_rate", "time/optimize_s"):
        assert isinstance(metrics[key], float), key
    pngs = sorted(p.name for p in (ideal_run / "images").glob("*.png"))
    assert pngs == ["000_tabby_seed0.png", "001_zebra_seed0.png", "002_great_white_shark_seed0.png"]
    assert (ideal_run / "grid.png").is_file() and (ideal_run / ".hydra" / "config.yaml").is_file()
    records = json.loads((ideal_run / "results.json").read_text())
    assert [r["target_name"] for r in records] == ["tabby", "zebra", "great white shark"]
    assert not (ideal_run / "jobs").exists()  # per-job files merged and removed


@pytest.mark.slow  # two subprocesses: Python, torch and Lightning start-up each
def test_ddp_with_two_cpu_processes_gives_the_same_images(ideal_run, tmp_path):
    run_dir = tmp_path / "ddp"
    proc = run_visualize([*IDEAL_ARGS, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"], run_dir)
    metrics = check_completed(proc.returncode, proc.stderr, run_dir)
    assert metrics["world_size"] == 2 and metrics["jobs"] == 3
    one, two = torch.load(ideal_run / "results.pt"), torch.load(run_dir / "results.pt")
    assert [r["job_id"] for r in two["records"]] == [0, 1, 2]  # no job lost or doubled
    assert torch.equal(one["images"], two["images"])
    assert sorted(p.name for p in (run_dir / "images").glob("*.png")) == sorted(p.name for p in (ideal_run / "images").glob("*.png"))


@pytest.mark.slow
def test_adversarial_cli_on_a_trained_checkpoint(trained_classifier, tmp_path, capsys):
    run_dir = tmp_path / "attack"
    args = [
        "task=adversarial", "preset=pgd", f"ckpt_path={trained_classifier['ckpt']}",
        f"check_ckpt_path={trained_classifier['ckpt']}", f"images=[{trained_classifier['image_dir']}/*/*.png]",
        "target=[vertical]", "adversarial.eps=16/255", "adversarial.step_size=2/255", "steps=20", "batch_size=8",
    ]
    metrics = check_completed(*visualize_in_process(args, run_dir, capsys), run_dir)
    assert metrics["attack/pairs"] == 18 and metrics["jobs"] == 3
    assert metrics["attack/eligible"] >= 10  # correctly classified, label != vertical
    assert metrics["attack/success_rate"] >= 0.9
    assert metrics["attack/linf_median"] <= 16 / 255 + 1e-6
    assert metrics["attack/transfer_success_rate"] == 1.0  # the same network, checked again
    records = json.loads((run_dir / "results.json").read_text())
    assert {r["label_name"] for r in records} == {"horizontal", "vertical", "diagonal"}  # from the folder names
    assert all(r["target_name"] == "vertical" for r in records)
    assert (run_dir / "grid.png").is_file()
    assert len(list((run_dir / "images").glob("*_to_vertical.png"))) == 18
    assert len(list((run_dir / "images").glob("*_perturbation.png"))) == 18


def test_cli_config_error_exits_2_with_the_message(tmp_path, capsys):
    run_dir = tmp_path / "bad"
    code, output = visualize_in_process([*TINY_BACKBONE, "target=[tabbby]"], run_dir, capsys)
    assert code == 2
    assert "target='tabbby' is not a class" in output and "Did you mean: tabby" in output
    assert "Traceback" not in output
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
