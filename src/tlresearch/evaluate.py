"""Evaluate a checkpoint on a split: ``python -m tlresearch.evaluate ckpt_path=… data=… data.root=…``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from tlresearch.core.config import check_choice, check_seed
from tlresearch.core.errors import ConfigError
from tlresearch.core.files import write_json_atomic
from tlresearch.core.instantiate import instantiate_node
from tlresearch.data.datamodule import ImageClassificationDataModule
from tlresearch.models.classifier import TransferClassifier, load_classifier
from tlresearch.results.run_predictions import record_predictions
from tlresearch.runner.entry import config_dir, run_task

log = logging.getLogger("tlresearch.evaluate")
SPLITS = ("train", "val", "test")


def check_classes_match(model: TransferClassifier, classes: list[str], data_key: str = "data") -> None:
    """Raise a ConfigError unless the dataset's classes are the checkpoint's."""
    trained = list(model.hparams.class_names or [])
    if len(trained) != len(classes):
        raise ConfigError(
            f"The checkpoint predicts {len(trained)} classes but `{data_key}` has {len(classes)} "
            f"({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''}). Evaluate on the dataset it was trained on "
            "(same data=…, and for pets the same data.target=breed|species)."
        )
    if trained != list(classes):
        log.warning("class names differ between checkpoint and dataset; evaluating by index order")


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test a checkpoint on ``cfg.split`` of ``cfg.data``; write metrics.json (with the split's
    95% bootstrap intervals, ``<split>/acc_ci_low`` ...) and predictions.csv in the run directory."""
    check_choice("split", cfg.split, SPLITS)
    seed = check_seed(cfg.seed)
    pl.seed_everything(seed, workers=True)
    model = load_classifier(cfg.ckpt_path, trust_targets=cfg.get("trust_targets") or ())
    datamodule = instantiate_node(cfg.data, "data")
    datamodule.set_preprocessing(model.backbone.preprocessing)
    check_classes_match(model, list(datamodule.classes))
    datamodule.setup("test" if cfg.split == "test" else "fit")
    # In dataset order, the train split too: predictions.csv names each image by its index.
    if isinstance(datamodule, ImageClassificationDataModule):
        loader = datamodule.dataloader(cfg.split, shuffle=False)
    else:
        loader = getattr(datamodule, f"{cfg.split}_dataloader")()
    trainer: pl.Trainer = instantiate_node(cfg.trainer, "trainer", logger=False, callbacks=[])
    results = trainer.test(model, dataloaders=loader, verbose=False)
    metrics: dict[str, Any] = {
        "status": "completed",
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "split": cfg.split,
        **{k.replace("test/", f"{cfg.split}/", 1): float(v) for k, v in results[0].items()},
        **datamodule.split_report(),  # data/*: images per split and class, test images excluded (data/datamodule.py)
    }
    out_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:  # under DDP every rank holds the gathered predictions; one writes
        if model.test_predictions is not None:
            metrics.update(record_predictions(out_dir, model.test_predictions, datamodule, list(datamodule.classes),
                                              seed=seed, split=cfg.split))
        write_json_atomic(out_dir / "metrics.json", metrics)
        print("\n".join(f"{k}: {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        print(f"Metrics: {(out_dir / 'metrics.json').resolve()}")
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point (Hydra)."""
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
