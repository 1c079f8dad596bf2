"""The table CLI: output on stdout, warnings and errors on stderr, exit status 2 for user mistakes."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tlresearch.table import main


def test_markdown_to_stdout(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep_dir), "--rows", "backbone", "--cols", "finetune"]) == 0
    out, err = capsys.readouterr()
    assert "| resnet50 | **90.5 ± 0.7** (n=2, 1 failed) | 82.0 ± 2.0 (n=3) |" in out  # the best of its row in bold
    assert "| vgg16 | no result (n=0/3: 2 failed, 1 interrupted) | 70.0 ± – (n=1, 2 missing) |" in out
    assert err == ""


def test_csv_latex_and_options(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep_dir), "--rows", "backbone,finetune", "--format", "csv", "--metric", "test/acc",
                 "--no-percent", "--show-runs"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    first = rows[0]
    assert (first["backbone"], first["finetune"], first["unit"], first["n"], first["failed"]) == (
        "resnet50", "full", "", "2", "1")
    assert float(first["mean"]) == pytest.approx(0.915)
    assert len(first["runs"].split(";")) == 3
    assert main([str(sweep_dir), "--rows", "backbone", "--format", "latex"]) == 0
    out, err = capsys.readouterr()
    assert r"\toprule" in out and "'finetune'" in err  # backbone alone mixes finetune settings: warned


def test_plot(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "figs" / "acc.png"
    assert main([str(sweep_dir), "--rows", "backbone", "--cols", "finetune", "--plot", str(png)]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300
    assert [p.name for p in png.parent.iterdir()] == ["acc.png"]  # no temporary file left behind
    assert str(png) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "test/mean_class_ac"], "unknown metric 'test/mean_class_ac'"),
        (["--rows", "backbon"], "unknown --rows key 'backbon'"),
        (["--cols", "finetun"], "unknown --cols key 'finetun'"),
    ],
)
def test_user_mistakes_exit_2(sweep_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                              message: str) -> None:
    assert main([str(sweep_dir), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and "Did you mean" in err
    assert "Traceback" not in err and err.count("\n") == 1  # one paragraph


def test_no_runs_and_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: no runs found under")
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_format_is_an_argparse_error(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep_dir), "--format", "html"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    """``python -m tlresearch.table`` exits 2 with a message and no traceback."""
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "tlresearch.table", str(tmp_path / "empty")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: no runs found") and "Traceback" not in proc.stderr


def test_rows_by_the_parameter_label_of_each_run(tmp_path: Path, fake, capsys: pytest.CaptureFixture[str]) -> None:
    """``params/label`` (metrics.json) names a row: the method, its settings and its trainable share."""
    labels = {"lora": "LoRA r=8 (0.29%)", "bitfit": "BitFit (0.1%)", "full": "full (100%)"}
    for i, (finetune, label) in enumerate(labels.items()):
        for seed in (0, 1):
            fake.write_run(tmp_path / f"{finetune}{seed}", fake.make_config(finetune=finetune, seed=seed), [],
                           {"finetune": finetune}, fake.completed(0.5 + i / 10 + seed / 100, **{"params/label": label}))
    assert main([str(tmp_path), "--rows", "params/label", "--format", "csv"]) == 0
    rows = {r["params/label"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert set(rows) == set(labels.values()) and all(r["n"] == "2" for r in rows.values())
    assert float(rows["full (100%)"]["mean"]) > float(rows["LoRA r=8 (0.29%)"]["mean"])

