"""Work as a dataset of jobs, so several devices share it like any prediction dataset.

A *job* is a fixed batch of images optimised together: the seeds of one target (ideal
images) or a few source images with one target (attacks). Its composition depends only on
the config (``batch_size``), and its random generator is seeded with ``seed + job_id``: the
images a job produces are the same whether one device or eight share the jobs.
``trainer.predict`` hands the jobs out with :class:`JobSampler`, a DistributedSampler that pads
the job list by repeating jobs so every rank gets at least one (Lightning's own prediction
sampler refuses a rank without data: fewer jobs than devices would fail). A job result that
arrives twice (the padding) is dropped by :func:`dedupe_results`, and a missing one is an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tlresearch.core.errors import ConfigError
from tlresearch.imageopt.images import SourceImages
from tlresearch.imageopt.network import FrozenClassifier, normalise_name, resolve_class, resolve_classes
from tlresearch.imageopt.objectives import UNTARGETED

UNKNOWN_LABEL = -1  # a source image's label is then the network's clean prediction


@dataclass(frozen=True)
class Job:
    """One batch of images to optimise. Per image: target class (``-1``: untargeted), seed
    index (ideal images), source image index and true label (attacks; ``-1``: not given)."""

    job_id: int
    targets: tuple[int, ...]
    seeds: tuple[int, ...] = ()
    sources: tuple[int, ...] = ()
    labels: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.targets)


def _chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def build_ideal_jobs(targets: Sequence[int], seeds: int, batch_size: int) -> list[Job]:
    """One job per target and chunk of ``batch_size`` seeds (the seeds of a target stay
    together, so the diversity term sees them)."""
    jobs: list[Job] = []
    for target in targets:
        for chunk in _chunks(range(seeds), batch_size):
            n = len(chunk)
            jobs.append(Job(len(jobs), (target,) * n, tuple(chunk), (-1,) * n, (UNKNOWN_LABEL,) * n))
    return jobs


def build_attack_jobs(num_images: int, targets: Sequence[int], labels: Sequence[int], batch_size: int) -> list[Job]:
    """One job per target (or one untargeted pass when ``targets`` is empty) and chunk of
    ``batch_size`` source images."""
    jobs: list[Job] = []
    for target in targets or [UNTARGETED]:
        for chunk in _chunks(range(num_images), batch_size):
            n = len(chunk)
            jobs.append(Job(len(jobs), (target,) * n, (0,) * n, tuple(chunk), tuple(labels[i] for i in chunk)))
    return jobs


def labels_from_names(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Each name's class index when it names one of ``class_names`` (case, ``_`` and ``-``
    ignored), else ``-1``."""
    lookup = {normalise_name(c): i for i, c in enumerate(class_names)}
    return [lookup.get(normalise_name(name), UNKNOWN_LABEL) for name in names]


def labels_from_folders(paths: Sequence[Path], class_names: Sequence[str]) -> list[int]:
    """Each image's parent folder name as its class when it is one (ImageFolder layout), else -1."""
    return labels_from_names([p.parent.name for p in paths], class_names)


def resolve_labels(value: Any, sources: SourceImages, network: FrozenClassifier) -> list[int]:
    """True classes of the source images: ``labels`` (one for all, or one per image), else the
    parent folder's name when it is a class, else ``-1`` (the clean prediction is used)."""
    if value is None:
        return labels_from_folders(sources.paths, network.class_names)
    if isinstance(value, (str, int)):
        return [resolve_class(value, network.class_names, "labels")] * len(sources)
    if len(value) != len(sources):
        raise ConfigError(
            f"labels has {len(value)} entries but images gives {len(sources)} files; give one label per image "
            "(in the order of the expanded paths), a single label for all, or null."
        )
    return resolve_classes(value, network.class_names, "labels")


def job_generator(seed: int, job_id: int, device: torch.device | str) -> torch.Generator:
    """The job's own random generator: ``seed + job_id``, whatever device or rank runs it."""
    return torch.Generator(device=device).manual_seed(int(seed) + int(job_id))


class JobDataset(Dataset):
    """Jobs as a map-style dataset; an item is a dict of tensors (moved to the device by
    Lightning) plus the job id. ``sources``: 8-bit source images of attack jobs."""

    def __init__(self, jobs: Sequence[Job], sources: torch.Tensor | None = None) -> None:
        self.jobs = list(jobs)
        self.sources = sources

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        job = self.jobs[index]
        item: dict[str, Any] = {
            "job_id": job.job_id,
            "targets": torch.tensor(job.targets, dtype=torch.long),
            "seeds": torch.tensor(job.seeds, dtype=torch.long),
            "source_index": torch.tensor(job.sources, dtype=torch.long),
            "labels": torch.tensor(job.labels, dtype=torch.long),
        }
        if self.sources is not None:
            item["sources"] = self.sources[list(job.sources)]
        return item


def single_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for ``batch_size=1``: a job already is a batch of images."""
    (item,) = items
    return item


class JobSampler(DistributedSampler):
    """Jobs round-robin over the DDP ranks, padded by repeating jobs (like DistributedSampler)
    so each rank gets ``ceil(jobs / ranks)``; all jobs in order in a single process.

    The rank and world size are read when the sampler is used, not when it is built: the
    DataLoader exists before Lightning starts the processes. Being a DistributedSampler,
    Lightning keeps it instead of injecting its own.
    """

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False, drop_last=False)

    @staticmethod
    def world() -> tuple[int, int]:
        """``(world size, rank)`` of the running process group, ``(1, 0)`` without one."""
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def __len__(self) -> int:
        world, _ = self.world()
        return math.ceil(len(self.dataset) / world)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        world, rank = self.world()
        jobs = list(range(len(self.dataset)))  # type: ignore[arg-type]
        total = len(self) * world
        padded = (jobs * math.ceil(total / max(1, len(jobs))))[:total]
        return iter(padded[rank:total:world])


def job_loader(dataset: JobDataset) -> DataLoader:
    """One job per predict step, in job order, sharded over the DDP ranks by :class:`JobSampler`."""
    return DataLoader(dataset, batch_size=1, sampler=JobSampler(dataset), num_workers=0, collate_fn=single_item)


def dedupe_results(results: Iterable[dict[str, Any]], expected_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Job results in job order, each job once; raise if any expected job has no result."""
    by_id: dict[int, dict[str, Any]] = {}
    for result in results:
        by_id.setdefault(int(result["job_id"]), result)
    expected = sorted(set(int(i) for i in expected_ids))
    missing = [i for i in expected if i not in by_id]
    if missing:
        raise RuntimeError(f"no result for jobs {missing[:10]} (of {len(expected)}): a worker failed to write them")
    return [by_id[i] for i in expected]
