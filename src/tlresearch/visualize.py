"""Make a network's idea of a class visible, and fool it with small perturbations.

    python -m tlresearch.visualize task=ideal backbone=vgg16 target=[tabby,zebra] preset=quality
    python -m tlresearch.visualize task=adversarial ckpt_path=run/checkpoints/last.ckpt \\
        images=[photos/beagle.jpg] target=Persian preset=pgd
    python -m tlresearch.visualize ... trainer=ddp trainer.devices=4     # jobs shared by 4 GPUs

:func:`visualize` is the pure task (config in, metrics and objects out); :func:`main` is the
thin Hydra wrapper. The run directory receives ``metrics.json``, ``results.json`` (one record
per image), ``results.pt`` (the float images), ``images/*.png``, ``grid.png`` and
``provenance.json``.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from tlresearch.core.config import check_choice, from_node, plain, require
from tlresearch.core.errors import ConfigError, suggest
from tlresearch.core.files import write_json_atomic
from tlresearch.core.instantiate import instantiate_group, instantiate_node
from tlresearch.imageopt.attacks import AttackSettings
from tlresearch.imageopt.ideal import IdealSettings
from tlresearch.imageopt.images import SourceImages, dataset_split_sources, decode_sources, load_source_images
from tlresearch.imageopt.jobs import Job, JobDataset, build_attack_jobs, build_ideal_jobs, job_loader, labels_from_names, resolve_labels
from tlresearch.imageopt.metrics import run_metrics
from tlresearch.imageopt.module import ImageOptModule, JobResultWriter, merge_job_results
from tlresearch.imageopt.network import (
    FrozenClassifier,
    check_image_size,
    network_from_backbone,
    network_from_checkpoint,
    resolve_classes,
)
from tlresearch.imageopt.outputs import write_outputs
from tlresearch.imageopt.render import log_results
from tlresearch.results.provenance import provenance_record
from tlresearch.runner.entry import config_dir, run_task
from tlresearch.runner.launchers import install as install_sweep_survival

install_sweep_survival()  # a sweep (joblib, submitit_local, slurm) survives a killed job (runner/launchers.py)

log = logging.getLogger("tlresearch.visualize")

TASKS = ("ideal", "adversarial")


def visualize(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optimise the images of ``cfg.task`` and write the run directory's records.

    Returns ``(metrics, objects)``: the flat metrics written to ``metrics.json`` (empty on
    ranks other than 0) and the trainer, module and per-image results.
    """
    out_dir = Path(cfg.paths.output_dir)
    settings = task_settings(cfg)
    # Seed before building networks: randomly initialised ones (backbone.weights=null) must be
    # the same in every DDP rank, and prediction does not broadcast weights.
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    network = build_network(cfg)
    check = build_check_network(cfg, network)
    image_size = resolve_image_size(cfg, network, check)
    jobs, sources = build_jobs(cfg, network, image_size)

    module = ImageOptModule(network, settings, image_size, seed=cfg.seed, check_network=check)
    writer = JobResultWriter(out_dir / "jobs")
    trainer = build_trainer(cfg, writer)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.predict(module, dataloaders=job_loader(JobDataset(jobs, sources.pixels if sources else None)), return_predictions=False)
    elapsed = time.perf_counter() - start
    objects: dict[str, Any] = {"trainer": trainer, "module": module}
    if not trainer.is_global_zero:
        return {}, objects

    results = merge_job_results(writer.directory, [job.job_id for job in jobs])
    images = torch.cat([r["images"] for r in results])
    records = [record for r in results for record in r["records"]]
    metrics = run_metrics(cfg.task, network, check, records, results, elapsed, trainer.world_size)
    pictures = write_outputs(out_dir, cfg.task, images, records, sources, metrics, cfg.get("grid_max_rows", 16))
    write_json_atomic(out_dir / "provenance.json", provenance_record(None, {"network": metrics["network"], "task": cfg.task}))
    log_to_loggers(cfg, metrics, pictures)
    print_summary(out_dir, metrics)
    objects.update(images=images, records=records, sources=sources)
    return metrics, objects


# ----------------------------------------------------------------------------- config -> objects


def task_settings(cfg: DictConfig) -> IdealSettings | AttackSettings:
    """The validated settings of the selected task, with the top-level ``steps`` shortcut."""
    task = cfg.get("task")
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is invalid: use task=ideal or task=adversarial.{suggest(str(task), TASKS)}")
    scope = plain(cfg.get("preset_scope"))
    if scope and task not in scope.get("tasks", TASKS):
        raise ConfigError(
            f"preset={scope.get('name')} is made for task={'|'.join(scope['tasks'])}, not task={task}: "
            f"add task={scope['tasks'][0]} or drop the preset."
        )
    overrides: dict[str, Any] = {}
    if cfg.get("steps") is not None:
        require(int(cfg.steps) >= 1, "steps", cfg.steps, "use at least 1 step, or null for the task's own count.")
        overrides["steps"] = int(cfg.steps)
    cls = IdealSettings if task == "ideal" else AttackSettings
    return from_node(cls, cfg.get(task), task, **overrides)


def build_network(cfg: DictConfig) -> FrozenClassifier:
    """The network under study: ``ckpt_path`` (a tlresearch.train checkpoint) when given,
    else the ``backbone`` config with its pretrained ImageNet head."""
    if cfg.get("ckpt_path"):
        return network_from_checkpoint(cfg.ckpt_path, "ckpt_path", cfg.get("trust_targets") or ())
    if cfg.get("backbone") is None:
        raise ConfigError("no network to study: choose backbone=<name> (conf/backbone/) or give ckpt_path=<checkpoint>.")
    return network_from_backbone(cfg.backbone, "backbone")


def build_check_network(cfg: DictConfig, network: FrozenClassifier) -> FrozenClassifier | None:
    """The optional second network (``check_ckpt_path`` or ``backbone@check_backbone=<name>``);
    it must have the same classes, compared by index."""
    if cfg.get("check_ckpt_path"):
        check, key = network_from_checkpoint(cfg.check_ckpt_path, "check_ckpt_path", cfg.get("trust_targets") or ()), "check_ckpt_path"
    elif cfg.get("check_backbone"):
        check, key = network_from_backbone(cfg.check_backbone, "check_backbone"), "check_backbone"
    else:
        return None
    if check.num_classes != network.num_classes:
        raise ConfigError(
            f"{key}: the second network has {check.num_classes} classes, the network under study {network.num_classes}; "
            "the check compares classes by index, so both must classify the same classes."
        )
    return check


def resolve_image_size(cfg: DictConfig, network: FrozenClassifier, check: FrozenClassifier | None) -> int:
    """``image_size``, or the network's own input size; checked against both networks."""
    size = int(cfg.image_size) if cfg.get("image_size") is not None else network.input_size
    check_image_size(network, size, "image_size")
    if check is not None:
        check_image_size(check, size, "image_size (second network)")
    return size


def build_jobs(cfg: DictConfig, network: FrozenClassifier, image_size: int) -> tuple[list[Job], SourceImages | None]:
    """The jobs of the task (and, for attacks, the decoded source images)."""
    batch_size = int(cfg.get("batch_size", 8))
    require(batch_size >= 1, "batch_size", batch_size, "use at least 1 image per job.")
    targets = resolve_classes(plain(cfg.get("target")), network.class_names, "target")
    if cfg.task == "ideal":
        if not targets:
            raise ConfigError("target is empty: task=ideal needs target classes, e.g. target=[tabby,zebra] or target=285.")
        seeds = int(cfg.get("seeds", 1))
        require(seeds >= 1, "seeds", seeds, "use at least 1 seed per target.")
        return build_ideal_jobs(targets, seeds, batch_size), None
    sources, labels = source_images(cfg, network, image_size)
    return build_attack_jobs(len(sources), targets, labels, batch_size), sources


def source_images(cfg: DictConfig, network: FrozenClassifier, image_size: int) -> tuple[SourceImages, list[int]]:
    """The attack's source images and their labels: ``images`` (files), or the ``data_split``
    of the ``data`` config (labels: its class names, when the network has such classes)."""
    if cfg.get("data") is None:
        sources = load_source_images(plain(cfg.get("images")), image_size, "images")
        return sources, resolve_labels(plain(cfg.get("labels")), sources, network)
    if plain(cfg.get("images")):
        raise ConfigError(
            "both images and data are set: take source images from files (images=[...]) or from a dataset (data=<name>), not both."
        )
    datamodule = instantiate_node(cfg.data, "data")
    datamodule.prepare_data()
    max_images = cfg.get("max_images")
    require(max_images is None or int(max_images) >= 1, "max_images", max_images, "use at least 1, or null for the whole split.")
    split = cfg.get("data_split", "test")
    check_choice("data_split", split, ("train", "val", "test"))
    paths, class_names = dataset_split_sources(datamodule, split, max_images)
    if not paths:
        raise ConfigError(
            f"data_split={cfg.get('data_split')!r} of the data config holds no image; pick another split (train | val | test)."
        )
    return decode_sources(paths, image_size, "data"), labels_from_names(class_names, network.class_names)


def build_trainer(cfg: DictConfig, writer: JobResultWriter) -> pl.Trainer:
    """The trainer of ``cfg.trainer`` for prediction with gradients (``inference_mode=False``)."""
    return instantiate_node(
        cfg.trainer, "trainer", callbacks=[writer], logger=False, inference_mode=False, enable_checkpointing=False
    )


# ----------------------------------------------------------------------------- outputs


def log_to_loggers(cfg: DictConfig, metrics: dict[str, Any], pictures: dict[str, Path]) -> None:
    """Send the config and metrics (and, to W&B, the pictures) to the configured loggers."""
    for logger in instantiate_group(cfg.get("logger"), "logger").values():
        log_results(logger, OmegaConf.to_container(cfg, resolve=True), metrics, pictures)


def print_summary(out_dir: Path, metrics: dict[str, Any]) -> None:
    """Print the headline metrics and where the files are."""
    shown = ", ".join(
        f"{k}={v:.4g}" for k, v in metrics.items() if "/" in k and isinstance(v, float) and not k.startswith("time/")
    )
    print(f"\n{metrics['task']}: {shown}\nRun directory: {out_dir.resolve()}\nMetrics: {(out_dir / 'metrics.json').resolve()}")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="visualize")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point (Hydra)."""
    return run_task(visualize, cfg)


if __name__ == "__main__":
    main()
