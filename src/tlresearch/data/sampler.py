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
* :class:`ResumableDataLoader` implements ``state_dict`` / ``load_state_dict``, so Lightning
  stores its position in every checkpoint (``loops.fit_loop.state_dict.combined_loader``) and
  restores it before the first batch of a resumed run: the run continues with the batches the
  interrupted run had not trained on yet, in the same order.

The position (epoch, batches trained on) is set by :class:`tlresearch.resume.ResumeState`
after each training batch, because only the trainer knows which batches were trained on: the
loader runs ahead of training (Lightning prefetches a batch, worker processes more).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Iterator, Sized
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

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


class ResumableRandomSampler(RandomSampler):
    """Shuffles without replacement; epoch ``e``'s order depends only on ``(seed, e)``.

    Lightning calls :meth:`set_epoch` before each epoch. :meth:`skip_next` makes the next
    iteration start after the first ``n`` indices of the epoch (the ones a resumed run has
    already trained on). Yields :class:`SeededIndex` items, to be read through a
    :class:`SeededDataset`. ``len()`` is always the whole epoch's, as Lightning expects of a
    resumed loader.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)  # type: ignore[arg-type]
        self.seed = int(seed)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on."""
        self.epoch = int(epoch)

    def skip_next(self, num_samples: int) -> None:
        """Make the next iteration (only) leave out the first ``num_samples`` indices of its epoch."""
        self._skip = max(0, int(num_samples))

    def order(self, epoch: int) -> list[int]:
        """The permutation of epoch ``epoch``."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        # Computed now rather than lazily, so the epoch and skip in force at iter() time apply
        # (worker processes start consuming at once, before the first batch is requested).
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        items = [SeededIndex(i, mix_seed(self.seed, epoch, i)) for i in self.order(epoch)[skip:]]
        return iter(items)

    def __len__(self) -> int:
        return len(self.data_source)


def resumable_sampler_of(loader: Any) -> ResumableRandomSampler | None:
    """The :class:`ResumableRandomSampler` behind ``loader``: its sampler, or the sampler Lightning
    wrapped into a ``DistributedSamplerWrapper`` under DDP (``None`` when there is none)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, ResumableRandomSampler):
        return sampler
    inner = getattr(getattr(sampler, "dataset", None), "_sampler", None)  # lightning_fabric's _DatasetSamplerWrapper
    return inner if isinstance(inner, ResumableRandomSampler) else None


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position Lightning checkpoints and restores (it is ``_Stateful``).

    The state is ``{"seed", "epoch", "batches_done"}``: the sampler's seed, the epoch and how
    many of its batches were trained on, as last reported with :meth:`set_progress`. Restoring
    it makes the next iteration yield the rest of that epoch (or the next epoch from its start
    when it was complete).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress: tuple[int, int] = (0, 0)  # (epoch, batches trained on in that epoch)

    def set_progress(self, epoch: int, batches_done: int) -> None:
        """Record that ``batches_done`` batches of epoch ``epoch`` have been trained on."""
        self.progress = (int(epoch), int(batches_done))

    def state_dict(self) -> dict[str, int]:
        sampler = resumable_sampler_of(self)
        epoch, done = self.progress
        return {"seed": sampler.seed if sampler else 0, "epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        self.progress = (epoch, done)
        sampler = resumable_sampler_of(self)
        if sampler is None:
            return
        sampler.seed = int(state["seed"])
        sampler.set_epoch(epoch)
        if sampler is self.sampler:
            sampler.skip_next(done * (self.batch_size or 1))
        elif done:
            # Under DDP each process sees a shard of the order: skipping a prefix of the whole
            # order would not skip the batches this process trained on.
            log.warning(
                "Resuming mid-epoch under a distributed sampler: epoch %d restarts from its first batch, "
                "so %d batches are seen twice. Resume from an end-of-epoch checkpoint for an exact continuation.",
                epoch, done,
            )


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
