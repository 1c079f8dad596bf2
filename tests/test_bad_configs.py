"""Bad command lines of ``python -m tlresearch.train`` end with a short message naming the key
and the fix, and a non-zero exit code; never a traceback.

Most cases run in-process through the real entry point (``tlresearch.train.main`` with a patched
``sys.argv``: Hydra's parsing, composition and error reporting, then ``run_task``); a few run as
real subprocesses. Exit codes: 1 for mistakes Hydra reports itself (unknown key or config-group
option), 2 for a :class:`~tlresearch.core.errors.ConfigError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, compose_cfg, run_cli, run_in_process

HYDRA, CONFIG = 1, 2  # exit codes
# Words of a message that tells the user what to do.
FIX_WORDS = ("use ", "must", "set ", "pass ", "choose", "did you mean", "allowed", "available", "point ", "check ",
             "resume with", "could not find", "could not override", "is not in struct", "missing", "e.g.")


def bad_checkpoints(folder: Path, overrides: list[str]) -> dict[str, Path]:
    """Checkpoint files the ckpt_path cases point at, of the model ``overrides`` would train but
    with 2 classes (the dataset has 3)."""
    from tlresearch.train import build_classifier

    folder.mkdir(parents=True, exist_ok=True)
    model = build_classifier(compose_cfg("train", overrides, folder / "run"), num_classes=2, class_names=["a", "b"])
    files = {
        "two_classes": folder / "two_classes.ckpt",
        "weights_only": folder / "weights_only.ckpt",
        "truncated": folder / "truncated.ckpt",
    }
    # What check_resume_checkpoint reads of a Lightning training checkpoint.
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "optimizer_states": [{}],
                "loops": {}}, files["two_classes"])
    torch.save(model.state_dict(), files["weights_only"])
    files["truncated"].write_bytes(files["two_classes"].read_bytes()[:5000])
    return files


# (id, overrides, exit code, fragments the message must contain). "{ckpt:<name>}" is replaced by
# a file of bad_checkpoints().
CASES = [
    ("unknown-key", ["foo=1"], HYDRA, ["foo"]),
    ("unknown-nested-key", ["optimizer.lrr=0.1"], HYDRA, ["lrr"]),
    ("unknown-data", ["data=nope"], HYDRA, ["data/nope"]),
    ("unknown-backbone", ["backbone=nope"], HYDRA, ["backbone/nope"]),
    ("unknown-finetune", ["finetune=nope"], HYDRA, ["finetune/nope"]),
    ("unknown-optimizer", ["optimizer=nope"], HYDRA, ["optimizer/nope"]),
    ("unknown-scheduler", ["scheduler=nope"], HYDRA, ["scheduler/nope"]),
    ("unknown-trainer", ["trainer=nope"], HYDRA, ["trainer/nope"]),
    ("unknown-logger", ["logger=nope"], HYDRA, ["logger/nope"]),
    ("unknown-launcher", ["hydra/launcher=nope"], HYDRA, ["hydra/launcher/nope"]),
    ("lr-zero", ["optimizer.lr=0"], CONFIG, ["optimizer.lr=0"]),
    ("lr-negative", ["optimizer.lr=-0.1"], CONFIG, ["optimizer.lr=-0.1"]),
    ("lr-not-a-number", ["optimizer.lr=abc"], CONFIG, ["optimizer.lr='abc'"]),
    ("cache-max-gb-zero", ["paths.cache_max_gb=0"], CONFIG, ["paths.cache_max_gb=0"]),
    ("weight-decay-negative", ["optimizer.weight_decay=-1"], CONFIG, ["optimizer", "weight_decay"]),
    ("momentum-not-a-number", ["optimizer.momentum=abc"], CONFIG, ["optimizer.momentum='abc'"]),
    ("batch-size-zero", ["data.batch_size=0"], CONFIG, ["data.batch_size=0"]),
    ("batch-size-text", ["data.batch_size=abc"], CONFIG, ["data.batch_size='abc'"]),
    ("batch-size-float", ["data.batch_size=2.5"], CONFIG, ["data.batch_size=2.5"]),
    ("val-fraction-one", ["data.val_fraction=1.0"], CONFIG, ["data.val_fraction=1.0"]),
    ("fractions-sum-over-one", ["data.val_fraction=0.6", "data.test_fraction=0.5"], CONFIG, ["data.val_fraction", "data.test_fraction"]),
    ("workers-negative", ["data.num_workers=-1"], CONFIG, ["data.num_workers=-1"]),
    ("augment-scale-reversed", ["data.augment.scale=[0.5,0.1]"], CONFIG, ["data.augment.scale"]),
    ("unknown-filter", ["data.filter=blah"], CONFIG, ["data.filter='blah'"]),
    ("unknown-data-argument", ["+data.unknown_key=1"], CONFIG, ["unknown_key", "data."]),
    ("required-root-missing", ["data.root=???"], CONFIG, ["data.root", "required"]),
    ("max-per-class-zero", ["data.max_per_class=0"], CONFIG, ["data.max_per_class=0"]),
    ("missing-root-download-off", ["data=pets", "data.root={missing}", "data.download=false"], CONFIG, ["data.root", "download"]),
    ("bad-weights-name", ["backbone.weights=NOPE"], CONFIG, ["backbone.weights='NOPE'"]),
    ("misspelt-backbone-name", ["backbone.name=resnet5"], CONFIG, ["backbone.name", "Did you mean: resnet50"]),
    ("unknown-timm-model", ["backbone=timm", "backbone.name=not_a_model_xyz"], CONFIG, ["backbone.name='not_a_model_xyz'"]),
    ("input-size-negative", ["backbone.input_size=-5"], CONFIG, ["backbone.input_size=-5"]),
    ("gradual-start-zero", ["finetune=gradual", "finetune.start_epoch=0"], CONFIG, ["finetune.start_epoch=0"]),
    ("layer-decay-above-one", ["finetune=layer_decay", "finetune.decay=2"], CONFIG, ["finetune.decay=2"]),
    ("zero-shot-without-clip", ["finetune=zero_shot"], CONFIG, ["backbone.name='resnet18' is invalid with finetune=zero_shot",
                                                                "use backbone=clip_vitb16 or backbone=clip_vitb16_laion"]),
    ("dropout-above-one", ["model.dropout=1.5"], CONFIG, ["model.dropout=1.5"]),
    ("unknown-head-init", ["model.head_init=foo"], CONFIG, ["model.head_init='foo'"]),
    ("label-smoothing-one", ["model.label_smoothing=1"], CONFIG, ["model.label_smoothing=1"]),
    ("unknown-model-key", ["+model.foo=1"], CONFIG, ["model.foo"]),
    ("seed-text", ["seed=abc"], CONFIG, ["seed='abc'"]),
    ("seed-negative", ["seed=-1"], CONFIG, ["seed=-1"]),
    ("resume-unknown", ["resume=yes"], CONFIG, ["resume='yes'"]),
    ("ckpt-missing", ["ckpt_path={missing}/last.ckpt"], CONFIG, ["ckpt_path", "does not exist"]),
    ("ckpt-truncated", ["ckpt_path={ckpt:truncated}"], CONFIG, ["ckpt_path", "truncated"]),
    ("ckpt-weights-only", ["ckpt_path={ckpt:weights_only}"], CONFIG, ["ckpt_path", "cannot be resumed"]),
    ("ckpt-num-classes-mismatch", ["ckpt_path={ckpt:two_classes}"], CONFIG,
     ["ckpt_path", "num_classes (from data): 2 in the checkpoint, 3 now"]),
    ("accelerator-unknown", ["trainer.accelerator=tpu"], CONFIG, ["trainer"]),
    ("precision-unknown", ["trainer.precision=banana"], CONFIG, ["trainer", "banana"]),
    ("devices-zero", ["trainer.devices=0"], CONFIG, ["trainer", "devices"]),
    ("max-epochs-text", ["trainer.max_epochs=abc"], CONFIG, ["trainer.max_epochs='abc'"]),
    ("max-epochs-negative", ["trainer.max_epochs=-5"], CONFIG, ["trainer.max_epochs=-5"]),
    ("accumulate-zero", ["trainer.accumulate_grad_batches=0"], CONFIG, ["trainer.accumulate_grad_batches=0"]),
    ("gradient-clip-text", ["trainer.gradient_clip_val=abc"], CONFIG, ["gradient_clip_val"]),
    ("deterministic-text", ["trainer.deterministic=maybe"], CONFIG, ["trainer.deterministic='maybe'"]),
    ("unknown-trainer-argument", ["+trainer.foo=1"], CONFIG, ["trainer", "foo"]),
    ("monitor-unknown-metric", ["callbacks.model_checkpoint.monitor=val/nonexistent"], CONFIG,
     ["callbacks.model_checkpoint.monitor='val/nonexistent'", "val/mean_class_acc"]),
    ("checkpoint-interval-zero", ["callbacks.last_checkpoint.every_n_train_steps=0"], CONFIG,
     ["callbacks.last_checkpoint.every_n_train_steps=0"]),
    ("test-after-fit-text", ["test_after_fit=maybe"], CONFIG, ["test_after_fit='maybe'"]),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, folder_root) -> dict[str, Path]:
    return bad_checkpoints(tmp_path_factory.mktemp("bad_checkpoints"), base_overrides(folder_root))


def base_overrides(folder_root: Path) -> list[str]:
    # max_steps=1: a case whose check is missing trains one step and fails the exit-code assertion fast.
    return [*FAST, "data=folder", f"data.root={folder_root}", "trainer.max_epochs=1", "++trainer.max_steps=1"]


def fill(overrides: list[str], checkpoints: dict[str, Path], tmp_path: Path) -> list[str]:
    out = []
    for text in overrides:
        text = text.replace("{missing}", str(tmp_path / "does-not-exist"))
        for name, path in checkpoints.items():
            text = text.replace(f"{{ckpt:{name}}}", str(path))
        out.append(text)
    return out


def check_clean_failure(code: int, output: str, expected_code: int, fragments: list[str]) -> None:
    assert code == expected_code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-3000:]}"
    assert any(word in output.lower() for word in FIX_WORDS), output[-3000:]


def error_paragraph(output: str) -> str:
    """The message run_task prints for a ConfigError (from 'Error: ' to the end)."""
    assert "\nError: " in output, output[-3000:]
    return output.split("\nError: ", 1)[1].strip()


@pytest.mark.parametrize("overrides, expected_code, fragments", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_command_line_gives_a_clean_message(overrides, expected_code, fragments, folder_root, checkpoints, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [*base_overrides(folder_root), *fill(overrides, checkpoints, tmp_path), f"hydra.run.dir={run_dir}"]
    code, output = run_in_process("tlresearch.train", argv, capsys)
    check_clean_failure(code, output, expected_code, fragments)
    if expected_code == CONFIG:
        message = error_paragraph(output)
        assert "\n\n" not in message and len(message) < 1200, message  # one paragraph
        # The run directory records the failure, so a table shows it instead of a missing run.
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record["status"] == "failed" and record["error"].startswith("ConfigError: ")


def test_there_are_at_least_thirty_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, expected_code, fragments",
    [
        pytest.param(["foo=1"], HYDRA, ["foo"], id="hydra-unknown-key"),
        pytest.param(["data=pets", "data.root={missing}", "data.download=false"], CONFIG, ["data.root", "download"], id="missing-root"),
    ],
)
def test_bad_command_line_in_a_real_subprocess(overrides, expected_code, fragments, folder_root, tmp_path):
    """The in-process cases above, checked once per exit code through a real ``python -m`` (each
    subprocess pays the full import time, so two cases stand for all of them)."""
    run_dir = tmp_path / "run"
    result = run_cli("tlresearch.train", *base_overrides(folder_root), *fill(overrides, {}, tmp_path), f"hydra.run.dir={run_dir}")
    check_clean_failure(result.returncode, result.stdout + result.stderr, expected_code, fragments)
    if expected_code == CONFIG:  # our own errors also mark the run as failed
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record["status"] == "failed" and record["error"].startswith("ConfigError: ")
