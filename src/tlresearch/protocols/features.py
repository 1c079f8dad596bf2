"""Frozen-backbone features: what identifies them, how they are stored, how they are extracted.

While the backbone is frozen (a linear probe) and the training images are not randomly
augmented, every epoch feeds the head the very same features. They are computed once per
(backbone weights, dataset files, split, transform, views, precision, decoder), stored under
``paths.cache_dir/features/<key>.pt`` (described by ``<key>.json``; the files, their locks,
checksums and size limit: ``protocols/feature_store.py``) and reused by every later run and
sweep job with the same key. With ``finetune.cache_views=K``,
K randomly augmented views of each training image are stored instead and epoch ``e`` trains
on view ``e mod K`` (each view is seeded per image, so it does not depend on workers or
devices).

This module is the extraction layer: :func:`feature_key` (what a set of features depends on),
:func:`extract_features` (the backbone's forward pass over images) and :func:`load_or_extract`
(cache first, under the key's lock, so concurrent jobs extract once; under DDP every rank
extracts a disjoint shard and rank 0 merges them). ``protocols/cached_data.py`` serves the features to
the epoch loop; ``protocols/epoch_loop.py`` decides when they apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tlresearch.core.errors import ConfigError
from tlresearch.core.files import atomic_write
from tlresearch.data.arrays import sample_file
from tlresearch.data.gpu_decode import device_decoded_batches
from tlresearch.data.images import ImageListDataset, Sample, as_image_list
from tlresearch.data.sampler import mix_seed, seeded_rng
from tlresearch.data.transforms import Preprocessing
from tlresearch.models.performance import autocast_for, channels_last_wanted, to_channels_last
from tlresearch.protocols.feature_store import CACHE_FORMAT, FeatureCache, FeatureSet

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# What identifies a set of features
# --------------------------------------------------------------------------------------------


def module_digest(module: nn.Module) -> str:
    """A content hash of every parameter and buffer of ``module`` (names, dtypes, shapes, values).

    Hashing the tensors, not the weights' name, makes a randomly initialised backbone (seeded)
    and a fine-tuned checkpoint cache correctly too.
    """
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def samples_digest(samples: Sequence[Sample]) -> str:
    """A hash of the samples in order: relative path, label, and the size and mtime of the file
    that holds the image (the image file, or the array file of an image stored in one: a file
    replaced in place changes the key)."""
    digest = hashlib.blake2b(digest_size=20)
    stats: dict[str, tuple[int, int]] = {}  # an array file holds many samples: stat it once
    for sample in samples:
        file = sample_file(sample.path)
        if file not in stats:
            try:
                st = os.stat(file)
                stats[file] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stats[file] = (-1, 0)
        size, mtime = stats[file]
        digest.update(f"{sample.rel}\t{sample.label}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureSpec:
    """How one split's features are made: everything that changes them, besides the data."""

    transform: Callable[[Any], torch.Tensor]
    views: int = 1  # augmented views per image (1 for the deterministic eval transform)
    seed: int | None = None  # seeds each (view, image) for random transforms; None: deterministic
    precision: str = "32-true"  # Lightning precision of the forward pass (autocast)
    decode_on_device: bool = False  # torchvision.io.decode_jpeg on the extraction device
    preprocessing: Preprocessing | None = None  # needed by decode_on_device

    def describe(self) -> dict[str, Any]:
        return {
            "transform": repr(self.transform),
            "views": self.views,
            "seed": self.seed,
            "precision": str(self.precision),
            "decode_on_device": self.decode_on_device,
        }


def feature_key(
    weights_digest: str, samples: Sequence[Sample], spec: FeatureSpec, backbone_info: dict | None = None
) -> tuple[str, dict[str, Any]]:
    """``(key, description)`` of the features of ``samples`` made by ``spec`` with the backbone
    whose :func:`module_digest` is ``weights_digest``; the description lists what went into
    the key, for humans."""
    description = {
        "format": CACHE_FORMAT,
        "backbone": backbone_info or {},
        "weights_digest": weights_digest,
        "samples": len(samples),
        "samples_digest": samples_digest(samples),
        **spec.describe(),
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return key, description


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


class _ViewDataset(Dataset):
    """``(transform(image), index)``; random transforms run under a seed of their own per
    (view, image), with the process's RNGs restored afterwards (the data package's
    :func:`~tlresearch.data.sampler.seeded_rng`), so views do not depend on workers or devices."""

    def __init__(self, images: ImageListDataset, transform: Callable, seed: int | None, view: int) -> None:
        self.images, self.transform, self.seed, self.view = images, transform, seed, view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.images[index]
        if self.seed is None:
            return self.transform(image), index
        with seeded_rng(mix_seed(self.seed, self.view, index)):
            return self.transform(image), index


def _pil_batches(
    images: Sequence[Sample] | ImageListDataset, indices: Sequence[int], spec: FeatureSpec, view: int, batch_size: int,
    num_workers: int, pin_memory: bool,
) -> Iterator[torch.Tensor]:
    """Input batches decoded and transformed by the data pipeline (PIL, in DataLoader workers)."""
    dataset = _ViewDataset(as_image_list(images), spec.transform, spec.seed, view)
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
    for x, _ in loader:
        yield x


def extract_features(
    backbone: nn.Module,
    samples: Sequence[Sample] | ImageListDataset,
    spec: FeatureSpec,
    *,
    device: torch.device | str = "cpu",
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    pin_memory: bool = False,
    channels_last: bool | str = "auto",
) -> torch.Tensor:
    """``[views, len(indices), F]`` float32 features of ``samples[indices]`` (all by default).

    ``samples``: a list of samples (an unreadable file is replaced by another of its class), or
    a DataModule split's :class:`~tlresearch.data.images.ImageListDataset`, whose policy and
    failure count apply (a test split never replaces a file; train and val count replacements).

    The backbone is moved to ``device`` (and to channels_last where that helps, see
    :func:`channels_last_wanted`) and runs in eval mode without gradients under
    ``spec.precision``'s autocast; its train/eval flags are restored afterwards. The global RNG
    is left untouched.
    """
    device = torch.device(device)
    indices = list(range(len(samples))) if indices is None else list(indices)
    backbone.to(device)
    use_channels_last = channels_last_wanted(channels_last, backbone, device)
    if use_channels_last:
        to_channels_last(backbone)
    modes = [m.training for m in backbone.modules()]
    backbone.eval()
    views = []
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for view in range(spec.views):
                if spec.decode_on_device:
                    batches = device_decoded_batches(samples, indices, spec.preprocessing, device, batch_size, num_workers)
                else:
                    batches = _pil_batches(samples, indices, spec, view, batch_size, num_workers, pin_memory)
                chunks = []
                for x in batches:
                    x = x.to(device, non_blocking=True)
                    if use_channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast_for(device, spec.precision):
                        chunks.append(backbone(x).float())
                views.append(torch.cat(chunks).cpu() if chunks else torch.empty(0, getattr(backbone, "num_features", 0)))
    finally:
        for module, mode in zip(backbone.modules(), modes):
            module.training = mode
    return torch.stack(views)


def load_or_extract(
    cache: FeatureCache,
    key: str,
    description: dict[str, Any],
    n: int,
    extract: Callable[[list[int]], torch.Tensor],
    labels: torch.Tensor,
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    broadcast: Callable[[Any], Any] = lambda value: value,
) -> tuple[FeatureSet, bool]:
    """The features of ``key`` from the cache, or extracted (and stored); ``(features, hit)``.

    Rank 0 holds the key's lock (:meth:`FeatureCache.locked`) from the check to the last read:
    another job that needs the same key waits, then reads the file this one wrote, and no
    job deletes the entry meanwhile. With ``world > 1`` rank 0 decides whether the cache holds
    the features (``broadcast`` shares its answer); on a miss each rank extracts the indices
    ``rank, rank + world, ...``, writes its shard, and rank 0 merges the shards into the cache
    file that every rank then reads.
    """
    with cache.locked(key) if rank == 0 else nullcontext():
        cached = cache.load(key) if rank == 0 else None
        hit = cached is not None and torch.equal(cached.labels, labels)
        if broadcast(hit):
            loaded = cached if rank == 0 else cache.read(key)
            barrier()  # every rank has read the entry before rank 0 lets go of it
            return loaded, True  # type: ignore[return-value]
        if world == 1:
            features = FeatureSet(extract(list(range(n))), labels)
            cache.save(key, features, description)
            return features, False
        return _extract_sharded(cache, key, description, n, extract, labels, rank, world, barrier), False


def _extract_sharded(
    cache: FeatureCache, key: str, description: dict[str, Any], n: int, extract: Callable[[list[int]], torch.Tensor],
    labels: torch.Tensor, rank: int, world: int, barrier: Callable[[], None],
) -> FeatureSet:
    """:func:`load_or_extract`'s miss under DDP: shards, merged by rank 0, read by every rank."""
    if cache.root is None:
        raise ConfigError(
            "finetune.cache_features=false cannot be combined with several processes: "
            "the ranks share features through the cache directory."
        )
    shard = extract(list(range(rank, n, world)))
    atomic_write(cache.shard_path(key, rank, world), lambda tmp: torch.save(shard, tmp))
    barrier()
    if rank == 0:
        shards = [torch.load(cache.shard_path(key, r, world), weights_only=True) for r in range(world)]
        merged = torch.empty(shards[0].shape[0], n, shards[0].shape[2], dtype=shards[0].dtype)
        for r, part in enumerate(shards):
            merged[:, r::world] = part
        cache.save(key, FeatureSet(merged, labels), description)
        for r in range(world):
            cache.shard_path(key, r, world).unlink(missing_ok=True)
    barrier()
    if not cache.path(key).is_file():
        raise RuntimeError(
            f"rank {rank}: the merged feature file {cache.path(key)} is missing; is paths.cache_dir shared by every process?"
        )
    loaded = cache.read(key)
    barrier()  # every rank has read the entry before rank 0 lets go of it
    return loaded
