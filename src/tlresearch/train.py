"""Train a transfer-learning classifier: ``python -m tlresearch.train backbone=resnet50 data=pets``.

:func:`train` is the pure task (config in, metrics and objects out); :func:`main` is the thin
Hydra wrapper. After fitting, the best checkpoint is tested and the run directory receives
``metrics.json``, ``predictions.csv``, ``provenance.json``, ``checkpoints/`` and PNG plots.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from tlresearch.checkpoints.resume import check_resume_checkpoint
from tlresearch.checkpoints.storage import AtomicCheckpointIO
from tlresearch.core.config import check_bool, check_known_keys, check_monitors, check_seed, check_trainer_settings, plain
from tlresearch.core.errors import ConfigError
from tlresearch.core.files import write_json_atomic
from tlresearch.core.instantiate import instantiate_group, instantiate_node
from tlresearch.data.datamodule import primary_metrics
from tlresearch.models.checkpoint_targets import check_checkpoint_file
from tlresearch.models.classifier import TransferClassifier
from tlresearch.protocols.context import RunContext
from tlresearch.protocols.feature_store import DEFAULT_LOCK_TIMEOUT_H, DEFAULT_MAX_GB
from tlresearch.protocols.run import run_protocol
from tlresearch.results import plots
from tlresearch.results.predictions import check_class_names
from tlresearch.results.provenance import provenance_record, write_provenance
from tlresearch.results.run_predictions import record_predictions
from tlresearch.results.wandb_report import report_and_finish
from tlresearch.runner.callbacks import ThroughputMonitor
from tlresearch.runner.entry import config_dir, run_task
from tlresearch.runner.launchers import install as install_sweep_survival
from tlresearch.runner.loggers import continue_logs
from tlresearch.runner.slurm_requeue import requeued_by_slurm

install_sweep_survival()  # a sweep (joblib, submitit_local, slurm) survives a killed job (runner/launchers.py)

log = logging.getLogger("tlresearch.train")


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, test with the best checkpoint, and write the run directory's records.

    Returns ``(metrics, objects)``: the flat metrics written to ``metrics.json`` and the
    trainer, model and datamodule.
    """
    out_dir = Path(cfg.paths.output_dir)
    check_trainer_settings(cfg.trainer)
    check_bool("test_after_fit", cfg.test_after_fit)
    seed = check_seed(cfg.seed)
    pl.seed_everything(seed, workers=True)

    ckpt_path = resume_checkpoint(cfg, out_dir)
    ckpt_key = "ckpt_path" if cfg.get("ckpt_path") else "resume=auto: checkpoint"
    if ckpt_path is not None:  # one that names code off the allow-list is refused before anything is built
        check_checkpoint_file(ckpt_path, ckpt_key, cfg.get("trust_targets") or ())
    datamodule = instantiate_node(cfg.data, "data")
    check_class_names(datamodule.classes)  # predictions.csv must hold them: say so now, not after training
    model = build_classifier(cfg, num_classes=datamodule.num_classes, class_names=list(datamodule.classes))
    datamodule.set_preprocessing(model.backbone.preprocessing)
    resumed_step = None
    if ckpt_path is not None:  # refuse a checkpoint of another setup now, not after minutes of setup
        resumed_step = check_resume_checkpoint(ckpt_path, model, ckpt_key)

    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    check_monitors(callbacks, model.logged_metrics())
    loggers = instantiate_group(cfg.get("logger"), "logger")
    if resumed_step is not None:
        continue_logs(loggers.values(), resumed_step)  # metrics.csv keeps the rows before the resumed step
    trainer: pl.Trainer = instantiate_node(
        cfg.trainer, "trainer", callbacks=list(callbacks.values()), logger=list(loggers.values()) or False,
        plugins=[checkpoint_io_for(loggers.values())],  # last.ckpt is never left half-written (checkpoints/storage.py)
    )
    write_run_provenance(out_dir, cfg, model, datamodule, trainer, ckpt_path)
    for lg in loggers.values():
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    # The schedule's protocol runs: the epoch loop (``fit``, perhaps on cached features), or
    # what replaces it (finetune=logistic: L-BFGS logistic regression); see protocols/run.py.
    context = run_context(cfg, seed, loggers.values())
    metrics, datamodule = run_protocol(
        model.schedule.protocol(), context, model, datamodule, lambda data: fit_and_test(cfg, trainer, model, data, callbacks, ckpt_path)
    )
    if hasattr(datamodule, "split_report"):  # data/*: images per split and class, test exclusions, replacements (data/datamodule.py)
        metrics.update(datamodule.split_report())
    write_run_records(out_dir, cfg, metrics, model, datamodule)
    report_and_finish(loggers.values(), metrics, model, datamodule)  # W&B: report, then finish the run
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule}


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, model: TransferClassifier, datamodule,
                 callbacks: dict[str, pl.Callback], ckpt_path: str | None) -> dict[str, Any]:
    """``trainer.fit`` (resuming from ``ckpt_path``), then test the best checkpoint."""
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except MisconfigurationException as exc:  # Lightning's verdict on settings it checks only during fit
        raise ConfigError(f"Lightning refused the settings: {exc}") from exc
    make_checkpoints_self_contained(trainer)
    metrics = fit_metrics(trainer, model, callbacks, time.perf_counter() - start)
    if cfg.test_after_fit and not trainer.interrupted:
        metrics.update(test_best(trainer, model, datamodule, callbacks))
    return metrics


def run_context(cfg: DictConfig, seed: int, loggers) -> RunContext:
    """The run's typed values that protocols read (they never see ``cfg``)."""
    return RunContext(
        output_dir=Path(cfg.paths.output_dir),
        cache_dir=Path(str(cfg.paths.cache_dir)),
        cache_max_gb=cfg.paths.get("cache_max_gb", DEFAULT_MAX_GB),
        cache_lock_timeout_h=cfg.paths.get("cache_lock_timeout_h", DEFAULT_LOCK_TIMEOUT_H),
        seed=seed,
        precision=str(cfg.trainer.get("precision", "32-true")),
        accelerator=cfg.trainer.get("accelerator", "cpu"),
        channels_last=(cfg.get("model") or {}).get("channels_last", "auto"),
        loggers=tuple(loggers),
    )


def checkpoint_io_for(loggers) -> AtomicCheckpointIO:
    """Our checkpoint writer. Frozen weights go to a once-per-run file (made whole when fit ends)
    unless a logger uploads checkpoint files during fit (W&B ``log_model``): it must get them whole."""
    uploads = any(getattr(lg, "_log_model", False) for lg in loggers)  # WandbLogger keeps log_model there
    return AtomicCheckpointIO(frozen_once=not uploads)


def make_checkpoints_self_contained(trainer: pl.Trainer) -> None:
    """After fit, rewrite the checkpoints that keep frozen weights in a shared file as complete
    files (:meth:`AtomicCheckpointIO.make_self_contained`); every rank waits for it before testing."""
    checkpoint_io = trainer.strategy.checkpoint_io
    if isinstance(checkpoint_io, AtomicCheckpointIO) and trainer.is_global_zero:
        folders = [cb.dirpath for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        checkpoint_io.make_self_contained(folders)
    trainer.strategy.barrier("tlresearch.checkpoints_self_contained")


def build_classifier(cfg: DictConfig, num_classes: int, class_names: list[str]) -> TransferClassifier:
    """The TransferClassifier of a training config (everything from plain config dicts)."""
    fixed = ("backbone", "num_classes", "class_names", "finetune", "optimizer", "scheduler")
    check_known_keys("model", (cfg.get("model") or {}).keys(), TransferClassifier.__init__, exclude=fixed)
    return TransferClassifier(
        backbone=plain(cfg.backbone),
        num_classes=num_classes,
        class_names=class_names,
        finetune=plain(cfg.finetune),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        **plain(cfg.get("model") or {}),
    )


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> str | None:
    """The checkpoint to resume from: ``ckpt_path``, or with ``resume=auto`` (implied in a job
    SLURM requeued: runner/slurm_requeue.py) this run directory's ``checkpoints/last.ckpt`` when
    there is one."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} does not exist; pass a checkpoint file or drop ckpt_path.")
        return str(path)
    resume = cfg.get("resume")
    if resume in (None, False, "none", "null"):
        if not requeued_by_slurm():
            return None
        resume = "auto"  # a requeued job never starts its run over: it continues what it wrote before the requeue
    if resume != "auto":
        raise ConfigError(f"resume={resume!r} is invalid: use resume=auto (or ckpt_path=<file> for a given checkpoint).")
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    log.info("resume=auto: no %s yet, starting a fresh run", last)
    return None


def _checkpoint_callback(callbacks: dict[str, pl.Callback]) -> ModelCheckpoint | None:
    return next((c for c in callbacks.values() if isinstance(c, ModelCheckpoint)), None)


def fit_metrics(
    trainer: pl.Trainer, model: TransferClassifier, callbacks: dict[str, pl.Callback], fit_s: float
) -> dict[str, Any]:
    """Metrics of the fit: status, epochs, parameter counts, time, throughput, best validation."""
    metrics: dict[str, Any] = {
        "status": "interrupted" if trainer.interrupted else "completed",
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        **model.parameter_counts(),
        "time/fit_s": fit_s,
    }
    throughput = next((c for c in callbacks.values() if isinstance(c, ThroughputMonitor)), None)
    if throughput is not None:
        metrics.update(throughput.metrics())  # throughput/train_img_s (training steps only), epoch_img_s, ...
    for key, value in trainer.callback_metrics.items():
        if key.startswith("val/"):
            metrics[key] = float(value)
    ckpt = _checkpoint_callback(callbacks)
    if ckpt is not None and ckpt.best_model_score is not None:
        metrics[f"val/best_{ckpt.monitor.split('/', 1)[-1]}"] = float(ckpt.best_model_score)
        metrics["best_checkpoint"] = ckpt.best_model_path
    return metrics


def test_best(trainer: pl.Trainer, model: TransferClassifier, datamodule, callbacks: dict[str, pl.Callback]) -> dict[str, Any]:
    """Test the best checkpoint (or the final weights when none was selected)."""
    ckpt = _checkpoint_callback(callbacks)
    ckpt_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    out = {k: float(v) for k, v in (results[0] if results else {}).items()}
    out["test/checkpoint"] = ckpt_path or "final weights"
    return out


@rank_zero_only
def write_run_records(out_dir: Path, cfg: DictConfig, metrics: dict[str, Any], model: TransferClassifier, datamodule) -> None:
    """predictions.csv (every test image), metrics.json (with the intervals of the test accuracies
    over those images), the confusion matrix and the plots; then say where they are."""
    if model.test_predictions is not None:
        metrics.update(record_predictions(out_dir, model.test_predictions, datamodule, list(datamodule.classes), seed=cfg.seed))
    metrics.update(primary_metrics(metrics))  # test/primary: the metric data/metric names (data/datamodule.py)
    write_json_atomic(out_dir / "metrics.json", metrics)
    csv = out_dir / "csv" / "metrics.csv"
    if csv.is_file():
        plots.plot_training_curves(csv, out_dir / "training_curves.png")
    if model.test_confusion_matrix is not None:
        matrix = model.test_confusion_matrix.tolist()
        write_json_atomic(out_dir / "confusion_matrix.json", {"classes": list(datamodule.classes), "matrix": matrix})
        plots.plot_confusion_matrix(model.test_confusion_matrix.numpy(), list(datamodule.classes), out_dir / "confusion_matrix.png")
    def shown(key: str, value: float) -> str:  # the value, with its 95% interval when there is one
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        return f"{key}={value:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else "")

    summary = ", ".join(shown(k, v) for k, v in metrics.items() if k.startswith("test/") and isinstance(v, float) and "_ci_" not in k)
    print(f"\nTest: {summary or 'not run'}\nRun directory: {out_dir.resolve()}\nMetrics: {(out_dir / 'metrics.json').resolve()}")


@rank_zero_only
def write_run_provenance(out_dir: Path, cfg: DictConfig, model: TransferClassifier, datamodule, trainer: pl.Trainer,
                         ckpt_path: str | None) -> None:
    """provenance.json, written before training starts, so a failed or killed run is traceable too."""
    run = {
        "seed": cfg.seed,
        "resumed_from": ckpt_path,
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "num_devices": trainer.num_devices,
        "precision": str(trainer.precision),
        "deterministic": cfg.trainer.get("deterministic"),
    }
    extra = {"backbone": model.backbone.describe(), "schedule": model.schedule.describe(), "run": run}
    write_provenance(out_dir, provenance_record(datamodule.describe(), extra, config=OmegaConf.to_container(cfg, resolve=True)))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point (Hydra)."""
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
