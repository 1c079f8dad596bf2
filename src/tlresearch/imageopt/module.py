"""The image-optimisation LightningModule and the writer that gathers its results.

Each image is its own optimisation problem, so the work is parallelised over *jobs*, never by
making images DDP parameters: ``trainer.predict`` hands each device its share of a
:class:`~tlresearch.imageopt.jobs.JobDataset`, and :meth:`ImageOptModule.predict_step` runs a
whole optimisation (under ``torch.enable_grad()``; the trainer needs ``inference_mode=False``).
:class:`JobResultWriter` saves every job's result to the run directory from whichever rank ran
it; after a barrier, rank 0 merges them (:func:`merge_job_results`), dropping duplicates.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from tlresearch.core.files import atomic_write
from tlresearch.imageopt.attacks import AttackSettings, run_attack
from tlresearch.imageopt.ideal import IdealSettings, optimize_ideal
from tlresearch.imageopt.images import to_float
from tlresearch.imageopt.jobs import UNKNOWN_LABEL, dedupe_results, job_generator
from tlresearch.imageopt.metrics import attack_records, ideal_records
from tlresearch.imageopt.network import FrozenClassifier


class ImageOptModule(pl.LightningModule):
    """Optimises images against a frozen network; one predict step = one job.

    Args:
        network: the network under study (frozen, normalisation inside).
        settings: :class:`IdealSettings` (ideal images) or :class:`AttackSettings` (attacks).
        image_size: side length of ideal images in pixels (attacks take their sources' size).
        seed: base seed; job ``j`` uses ``seed + j``.
        check_network: an optional second network for the top-1 hit / transfer check.
    """

    def __init__(
        self,
        network: FrozenClassifier,
        settings: IdealSettings | AttackSettings,
        image_size: int,
        seed: int = 0,
        check_network: FrozenClassifier | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.check_network = check_network
        self.settings = settings
        self.image_size = int(image_size)
        self.seed = int(seed)

    @property
    def task(self) -> str:
        return "ideal" if isinstance(self.settings, IdealSettings) else "adversarial"

    def predict_step(self, job: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        """Run one job; return its images (on the CPU), per-image records and step count."""
        generator = job_generator(self.seed, job["job_id"], self.device)
        # Lightning predicts under no_grad; the optimisation needs gradients to the images.
        with torch.enable_grad():
            if isinstance(self.settings, IdealSettings):
                return self.ideal_job(job, generator)
            return self.attack_job(job, generator)

    def ideal_job(self, job: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Optimise the job's images from noise toward their targets."""
        settings: IdealSettings = self.settings  # type: ignore[assignment]
        result = optimize_ideal(self.network, job["targets"], settings, self.image_size, generator)
        records = ideal_records(
            self.network, self.check_network, result, job["targets"], job["seeds"], int(job["job_id"]),
            settings.transforms, settings.eval_transforms, generator,
        )
        steps = settings.steps * len(job["targets"])
        return {"job_id": int(job["job_id"]), "images": result.images.float().cpu(), "records": records, "image_steps": steps}

    def attack_job(self, job: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Attack the job's source images; unknown labels become the clean prediction."""
        settings: AttackSettings = self.settings  # type: ignore[assignment]
        sources = to_float(job["sources"])
        labels = self.resolve_labels(sources, job["labels"])
        result = run_attack(self.network, sources, labels, job["targets"], settings, generator)
        records = attack_records(
            self.network, self.check_network, sources, labels, job["targets"], result, job["source_index"], int(job["job_id"])
        )
        steps = settings.iterations * settings.starts * len(sources)
        return {"job_id": int(job["job_id"]), "images": result.images.float().cpu(), "records": records, "image_steps": steps}

    @torch.no_grad()
    def resolve_labels(self, sources: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Given labels where known, else the network's prediction on the clean image."""
        if bool((labels != UNKNOWN_LABEL).all()):
            return labels
        predicted = self.network(sources).argmax(1)
        return torch.where(labels == UNKNOWN_LABEL, predicted, labels)


class JobResultWriter(BasePredictionWriter):
    """Saves each job's result as ``<directory>/job_<id>.rank<r>.pt`` from the rank that ran it.

    The directory is emptied by rank 0 before prediction starts; the barrier at the end
    guarantees every rank's files exist before rank 0 merges them.
    """

    def __init__(self, directory: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.directory = Path(directory)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("imageopt-results-dir")

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Sequence[int] | None,
        batch: Any, batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        path = self.directory / f"job_{prediction['job_id']:06d}.rank{trainer.global_rank}.pt"
        atomic_write(path, lambda tmp: torch.save(prediction, tmp))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier("imageopt-results-written")


def merge_job_results(directory: str | Path, expected_ids: Sequence[int], remove: bool = True) -> list[dict[str, Any]]:
    """Every job's result once, in job order, from the writers' files (then removed)."""
    directory = Path(directory)
    files = sorted(directory.glob("job_*.pt"))
    results = dedupe_results((torch.load(f, map_location="cpu", weights_only=True) for f in files), expected_ids)
    if remove:
        shutil.rmtree(directory, ignore_errors=True)
    return results
