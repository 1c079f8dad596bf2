"""A shuffling training loader that resumes exactly, mid-epoch included.

Three pieces make the order and the augmentation of every training image a pure function of
``(seed, epoch, image index)``, whatever happened before:

* :class:`ResumableRandomSampler` draws epoch ``e``'s permutation from a generator seeded by
  ``(seed, e)`` (not from a generator that carries state from epoch to epoch), and tags every
  index with its own augmentation seed (:class:`SeededIndex`);
* :class:`SeededDataset` runs the wrapped dataset's ``__getitem__`` (decoding and random
  augmentation) under that seed, with the process's global RNGs (torch CPU, numpy, python)
  saved and restored around it: augmentation neither depends on nor disturbs the RNG the
  training step uses (dropout), and it is the same with 0 or 8 worker processes;
* the sampler also holds the training position (epoch, samples trained on), which
  :class:`tlresearch.checkpoints.resume.ResumeState` updates after each training batch (only the trainer
  knows which batches were trained on: the loader runs ahead, Lightning prefetches a batch and
  worker processes more). It goes into every checkpoint, and a resumed run continues with the
  samples the interrupted run had not trained on yet, in the same order.

How the position travels: Lightning saves and restores a *stateful* train loader
(:class:`ResumableDataLoader`) with the fit loop, but restores it only when the loader is
created after the checkpoint's loops are loaded. Our classifier asks for
``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (LR schedules need the total
step count), which makes Lightning 2.6 build and start iterating the train loader *before* it
restores the loops, so that restore never reaches the loader. The DataModule route has no such
gap: Lightning restores a DataModule's ``state_dict`` before anything is set up, so
:class:`ResumableTrainData` keeps the position there and applies it to the train loader it
creates next.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
from collections.abc import Iterator, Sized
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers, stable across processes, platforms and Python versions
    (unlike ``hash()``), and decorrelated between neighbouring inputs."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededIndex(NamedTuple):
    """A dataset index with the seed its sample's random augmentation runs under."""

    index: int
    seed: int


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG, numpy's and python's global RNGs seeded by ``seed``;
    restore their previous states afterwards.

    Only the CPU generator is touched (``torch.manual_seed`` would also reseed every CUDA
    device's generator, which the training step's dropout uses).
    """
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class SeededDataset(Dataset):
    """``dataset[i]`` for a :class:`SeededIndex` ``(i, seed)``, computed under :func:`seeded_rng`.

    Plain integer indices pass through unseeded. Attributes of the wrapped dataset (``samples``,
    ``targets``, ``transform``...) are reachable through the wrapper.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SeededIndex | int) -> Any:
        if isinstance(key, SeededIndex):
            with seeded_rng(key.seed):
                return self.dataset[key.index]
        return self.dataset[key]

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes the wrapper lacks. Guard "dataset" itself: while unpickling
        # in a worker process it is not set yet, and delegating would recurse forever.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableRandomSampler(DistributedSampler):
    """Shuffles without replacement; epoch ``e``'s order depends only on ``(seed, e)``; under DDP
    each process takes its shard of that order.

    Lightning calls :meth:`set_epoch` before each epoch. Yields :class:`SeededIndex` items, to
    be read through a :class:`SeededDataset`. It also holds the training position
    (:meth:`set_progress`, :meth:`state_dict`: samples of this process's shard trained on);
    :meth:`load_state_dict` makes the next iteration (only) start where that position left
    off. ``len()`` is always the whole epoch's shard, as Lightning expects of a resumed loader.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP: Lightning replaces a
    ``RandomSampler`` by a plain ``DistributedSampler(dataset)`` (losing the seeded order, the
    augmentation seeds and the position) and wraps any other sampler into a
    ``DistributedSamplerWrapper`` that indexes a full epoch (a resumed, shorter one breaks it).
    The shards are ``DistributedSampler``'s: the epoch's order padded with its first samples to
    a multiple of the number of processes, process ``r`` taking positions ``r, r + W, ...``.
    ``num_replicas`` and ``rank`` default to the initialised process group's (1 and 0 without
    one), read when the sampler is built (the training loader is built after DDP starts).
    """

    def __init__(self, data_source: Sized, seed: int, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        world = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        # DistributedSampler.__init__ needs a process group; these are the attributes it sets.
        self.dataset, self.data_source = data_source, data_source
        self.num_replicas = int(world)
        self.rank = int(rank if rank is not None else (dist.get_rank() if distributed else 0))
        self.shuffle, self.drop_last = True, False
        self.num_samples = math.ceil(len(data_source) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.seed = int(seed)
        self.epoch = 0
        self.progress: tuple[int, int] = (0, 0)  # (epoch, samples of this shard trained on)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on."""
        self.epoch = int(epoch)

    def set_progress(self, epoch: int, samples_done: int) -> None:
        """Record that the first ``samples_done`` samples of this shard of epoch ``epoch`` have been trained on."""
        self.progress = (int(epoch), int(samples_done))

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.progress
        return {"seed": self.seed, "epoch": epoch, "samples_done": done, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any], *, skip: bool = True) -> None:
        """Continue from ``state``: its seed and epoch, and (with ``skip``) the next iteration
        leaves out the samples already trained on; a complete epoch continues with the next one."""
        epoch, done = int(state["epoch"]), int(state["samples_done"])
        if done >= len(self):
            epoch, done = epoch + 1, 0
        self.seed = int(state["seed"])
        self.set_epoch(epoch)
        self.progress = (epoch, done)
        self._skip = done if skip else 0

    def order(self, epoch: int) -> list[int]:
        """The permutation of epoch ``epoch`` (the whole dataset, before sharding)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def shard(self, epoch: int) -> list[int]:
        """This process's part of epoch ``epoch``'s order (all of it in a single process)."""
        order = self.order(epoch)
        padded = (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size]
        return padded[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        # Computed now rather than lazily, so the epoch and skip in force at iter() time apply
        # (worker processes start consuming at once, before the first batch is requested).
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        items = [SeededIndex(i, mix_seed(self.seed, epoch, i)) for i in self.shard(epoch)[skip:]]
        return iter(items)

    def __len__(self) -> int:
        return self.num_samples


def resumable_sampler_of(loader: Any) -> ResumableRandomSampler | None:
    """The :class:`ResumableRandomSampler` behind ``loader`` (``None`` when there is none)."""
    sampler = getattr(loader, "sampler", None)
    return sampler if isinstance(sampler, ResumableRandomSampler) else None


def restore_position(loader: Any, state: dict[str, Any]) -> None:
    """Make ``loader``'s next iteration continue from the position ``state``.

    A position saved with another number of processes counts samples of other shards: the epoch
    restarts instead, with a warning.
    """
    sampler = resumable_sampler_of(loader)
    if sampler is None:
        return
    saved_world = int(state.get("num_replicas", 1))
    same_shards = saved_world == sampler.num_replicas
    sampler.load_state_dict(state, skip=same_shards)
    if not same_shards and sampler.progress[1]:
        log.warning(
            "Resuming mid-epoch with %d processes from a checkpoint written by %d: epoch %d restarts from its first batch, "
            "so samples already trained on are seen again. Resume with the same number of processes (or from an "
            "end-of-epoch checkpoint) for an exact continuation.",
            sampler.num_replicas, saved_world, sampler.progress[0],
        )


class ResumableDataLoader(DataLoader):
    """A DataLoader with Lightning's stateful-loader interface (``state_dict`` / ``load_state_dict``):
    the training position of its :class:`ResumableRandomSampler`."""

    def state_dict(self) -> dict[str, int]:
        sampler = resumable_sampler_of(self)
        return sampler.state_dict() if sampler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            restore_position(self, state)


def shuffled_loader(dataset: Dataset, *, seed: int, **loader_kwargs: Any) -> ResumableDataLoader:
    """A shuffling :class:`ResumableDataLoader` over ``dataset`` (order and augmentation seeded by ``seed``).

    ``loader_kwargs`` are DataLoader arguments other than ``shuffle``, ``sampler`` and
    ``generator`` (a private generator seeded by ``seed`` is used for the worker base seed, so
    starting an epoch draws nothing from the global RNG).
    """
    return ResumableDataLoader(
        SeededDataset(dataset),
        sampler=ResumableRandomSampler(dataset, seed=seed),  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(mix_seed(seed, -1)),
        **loader_kwargs,
    )


class ResumableTrainData:
    """LightningDataModule mixin: the training position is part of the DataModule's checkpointed state.

    Build the training loader with :meth:`resumable_train_loader`. Lightning calls
    :meth:`state_dict` when it writes a checkpoint and :meth:`load_state_dict` when it restores
    one, before it creates the loaders; the next training loader then starts where the
    checkpointed run stopped.
    """

    _train_sampler: ResumableRandomSampler | None = None
    _pending_position: dict[str, Any] | None = None

    def resumable_train_loader(self, dataset: Dataset, *, seed: int, **loader_kwargs: Any) -> ResumableDataLoader:
        """:func:`shuffled_loader`, positioned where a restored checkpoint stopped (if one was)."""
        loader = shuffled_loader(dataset, seed=seed, **loader_kwargs)
        if self._pending_position is not None:
            restore_position(loader, self._pending_position)
            self._pending_position = None
        self._train_sampler = resumable_sampler_of(loader)
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self._train_sampler.state_dict()} if self._train_sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_position = state_dict.get("train_position")
