"""The DataModule of cached features: an image DataModule's splits served as backbone features.

:class:`CachedFeatureDataModule` wraps an image DataModule and serves ``([N, F] features,
labels)`` batches in the same order (same batch size, same seeded shuffle) as the image
loaders; :meth:`TransferClassifier.features` passes ``[N, F]`` tensors straight to the head.
The features come from ``protocols/features.py`` (read from the cache or extracted once; under
DDP every rank extracts a disjoint shard). :func:`cached_datamodule` builds one from the run's
typed values (:class:`~tlresearch.protocols.context.RunContext`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlresearch.data.arrays import stored_as_arrays
from tlresearch.data.datamodule import ImageClassificationDataModule, SplitLoaders
from tlresearch.data.sampler import SeededIndex, shuffled_loader
from tlresearch.data.transforms import eval_transform, train_transform
from tlresearch.protocols.context import RunContext
from tlresearch.protocols.feature_store import DEFAULT_LOCK_TIMEOUT_H, DEFAULT_MAX_GB, FeatureCache, FeatureSet
from tlresearch.protocols.features import (
    FeatureSpec,
    extract_features,
    feature_key,
    load_or_extract,
    module_digest,
)

log = logging.getLogger(__name__)

#: On CUDA, cached features move to the GPU when they take at most this share of free memory.
_GPU_RESIDENT_SHARE = 0.25


class FeatureDataset(Dataset):
    """``(features[view(), i], labels[i])``; batches are gathered with one tensor index."""

    def __init__(self, features: FeatureSet, view: Callable[[], int] = lambda: 0) -> None:
        self.set, self.view = features, view

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.set.features[self.view(), index], self.set.labels[index]

    def __getitems__(self, indices: list[int | SeededIndex]) -> tuple[torch.Tensor, torch.Tensor]:
        # The shuffling sampler yields SeededIndex items (index, augmentation seed) and its
        # SeededDataset wrapper hands attribute lookups, this method included, to this dataset:
        # features need no augmentation seed, only the index.
        index = torch.as_tensor([i.index if isinstance(i, SeededIndex) else i for i in indices], device=self.set.labels.device)
        return self.set.features[self.view()].index_select(0, index), self.set.labels.index_select(0, index)


def _already_batched(batch: Any) -> Any:
    """collate_fn of :class:`FeatureDataset`: ``__getitems__`` already built the batch."""
    return batch


_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",), None: ("train", "val", "test")}


class CachedFeatureDataModule(SplitLoaders, pl.LightningDataModule):
    """Serves an image DataModule's splits as cached backbone features.

    Args:
        images: the image DataModule (its samples, transforms, batch size, workers).
        backbone: the frozen backbone.
        cache_dir: where feature files go (``None``: memory only, single process).
        cache_max_gb, cache_lock_timeout_h: the cache's size limit and longest lock wait
            (``paths.cache_max_gb``, ``paths.cache_lock_timeout_h``; see ``feature_store.py``).
        views: ``0``: the training split uses the deterministic eval transform; ``K >= 1``: K
            augmented views per training image with the DataModule's training augmentation.
        seed: seeds the augmented views.
        precision, device: used when no Trainer is attached (with one, its precision and
            device are used, and under DDP its ranks share the extraction).
        decode_on_device: decode JPEGs with ``torchvision.io.decode_jpeg`` on the device (not
            for images stored in array files: those are read by the usual loader, with a warning).
        channels_last: the ``model.channels_last`` setting for the extraction forward pass.
        backbone_info: the backbone's ``describe()``, recorded in the key's description.
    """

    def __init__(
        self,
        images: ImageClassificationDataModule,
        backbone: nn.Module,
        *,
        cache_dir: str | os.PathLike | None,
        cache_max_gb: float | None = DEFAULT_MAX_GB,
        cache_lock_timeout_h: float = DEFAULT_LOCK_TIMEOUT_H,
        views: int = 0,
        seed: int = 0,
        precision: str = "32-true",
        device: torch.device | str = "cpu",
        decode_on_device: bool = False,
        channels_last: bool | str = "auto",
        backbone_info: dict | None = None,
    ) -> None:
        super().__init__()
        self.images = images
        self.backbone = backbone
        self.cache = FeatureCache(cache_dir, max_gb=cache_max_gb, lock_timeout_h=cache_lock_timeout_h)
        self.views = views
        self.seed = seed
        self.precision = precision
        self.device = torch.device(device)
        self.decode_on_device = decode_on_device
        self.channels_last = channels_last
        self.backbone_info = backbone_info or {}
        self._sets: dict[str, FeatureSet] = {}
        self._weights_digest: str | None = None  # the backbone is frozen: hashed once
        self.stats: dict[str, dict[str, Any]] = {}  # per split: key, hit, seconds
        self._warned_arrays = False

    # -- what the train task and the records read, as from the image DataModule ----------------

    @property
    def classes(self) -> list[str]:
        return self.images.classes

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    @property
    def batch_size(self) -> int:
        return self.images.batch_size

    def set_preprocessing(self, preprocessing: Any) -> None:
        self.images.set_preprocessing(preprocessing)
        self._sets.clear()

    def split_report(self) -> dict[str, int | float]:
        """The image DataModule's ``data/*`` numbers (the features are of its samples)."""
        return self.images.split_report()

    def describe(self) -> dict[str, Any]:
        return {
            **self.images.describe(),
            "feature_cache": {"dir": str(self.cache.root) if self.cache.root else None, "views": self.views, "splits": self.stats},
        }

    # -- lifecycle -----------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.images.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Load or extract the features of the splits ``stage`` needs (once per split)."""
        self.images.setup()
        for split in _STAGE_SPLITS.get(stage, _STAGE_SPLITS[None]):
            if split not in self._sets:
                self._sets[split] = self._load_or_extract(split)

    def features(self, split: str) -> FeatureSet:
        """The features of ``split`` (extracted on first use)."""
        if split not in self._sets:
            self.images.setup()
            self._sets[split] = self._load_or_extract(split)
        return self._sets[split]

    def spec(self, split: str) -> FeatureSpec:
        """How ``split``'s features are made: augmented views for training when ``views >= 1``."""
        pre = self.images.preprocessing
        augmented = split == "train" and self.views >= 1
        return FeatureSpec(
            transform=train_transform(pre, self.images.augmentation) if augmented else eval_transform(pre),
            views=self.views if augmented else 1,
            seed=self.seed if augmented else None,
            precision=str(self._trainer_or("precision", self.precision)),
            decode_on_device=self.decode_on_device and not augmented and self._jpeg_files(split),
            preprocessing=pre,
        )

    def _jpeg_files(self, split: str) -> bool:
        """False (with a warning, once) when ``split``'s images are stored in array files (CIFAR,
        SVHN, PCam): ``decode_on_device`` has no encoded file to decode there. It is a speed setting
        that one sweep applies to every dataset of a suite, so the job goes on with the usual
        loader rather than failing; the cache key records the decoder actually used."""
        if not stored_as_arrays(self.images.dataset(split).samples):
            return True
        if not self._warned_arrays:
            self._warned_arrays = True
            log.warning(
                "finetune.decode_on_device=true does not apply to %s: its images are stored as pixel arrays, not JPEG files; "
                "extracting features with the usual loader instead (set finetune.decode_on_device=false to silence this).",
                self.images.name,
            )
        return False

    def _trainer_or(self, what: str, default: Any) -> Any:
        trainer = self.trainer
        if trainer is None:
            return default
        return {"precision": trainer.precision, "device": trainer.strategy.root_device}.get(what, default)

    def _load_or_extract(self, split: str) -> FeatureSet:
        started = time.perf_counter()
        images = self.images.dataset(split)  # its policy: a test file is never replaced; train/val replacements are counted
        samples = images.samples
        spec = self.spec(split)
        if self._weights_digest is None:
            self._weights_digest = module_digest(self.backbone)
        key, description = feature_key(self._weights_digest, samples, spec, self.backbone_info)
        description.update(split=split, dataset={"name": self.images.name, "root": str(getattr(self.images, "root", ""))})
        trainer = self.trainer
        device = torch.device(self._trainer_or("device", self.device))
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        barrier = trainer.strategy.barrier if trainer is not None else (lambda: None)
        broadcast = trainer.strategy.broadcast if trainer is not None else (lambda value: value)
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)

        def extract(indices: list[int]) -> torch.Tensor:
            return extract_features(
                self.backbone, images, spec, device=device, indices=indices, batch_size=self.images.batch_size,
                num_workers=self.images.num_workers, pin_memory=self.images.pin_memory, channels_last=self.channels_last,
            )

        features, hit = load_or_extract(
            self.cache, key, description, len(samples), extract, labels, rank=rank, world=world, barrier=barrier, broadcast=broadcast
        )
        seconds = time.perf_counter() - started
        self.stats[split] = {"key": key, "hit": hit, "seconds": round(seconds, 3), "shape": list(features.features.shape)}
        where = f" ({self.cache.path(key)})" if self.cache.root else ""
        log.info(
            "%s features of %d images: %s in %.1f s%s", split, len(samples), "read from the cache" if hit else "extracted", seconds, where
        )
        return self._resident(features, device)

    def _resident(self, features: FeatureSet, device: torch.device) -> FeatureSet:
        """On CUDA, keep feature sets that fit easily on the GPU: batches are then indexed there
        and nothing is copied per step (larger ones stay in host memory, batches pinned)."""
        if device.type != "cuda":
            return features
        free, _ = torch.cuda.mem_get_info(device)
        if features.features.numel() * features.features.element_size() <= _GPU_RESIDENT_SHARE * free:
            return features.to(device)
        return features

    # -- loaders -------------------------------------------------------------------------------

    def _epoch_view(self) -> int:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return epoch % self._sets["train"].num_views

    def dataloader(self, split: str, *, shuffle: bool | None = None) -> DataLoader:
        """Batches of ``split`` in the image loader's order: same batch size and, for train, the
        same resumable shuffle (:func:`~tlresearch.data.sampler.shuffled_loader`: epoch ``e``'s
        order is a function of ``(torch.initial_seed(), e)``), so a cached run sees exactly the
        batches the image run would, and resumes mid-epoch the same way."""
        features = self.features(split)
        shuffle = (split == "train") if shuffle is None else shuffle
        common = dict(
            batch_size=self.images.batch_size,
            num_workers=0,  # in-memory tensors: worker processes would only add IPC
            pin_memory=self.images.pin_memory and features.labels.device.type == "cpu",
            collate_fn=_already_batched,
            drop_last=False,
        )
        if shuffle:
            return shuffled_loader(FeatureDataset(features, self._epoch_view), seed=torch.initial_seed(), **common)
        return DataLoader(FeatureDataset(features), shuffle=False, **common)


def cached_datamodule(
    context: RunContext,
    model: Any,
    images: ImageClassificationDataModule,
    *,
    views: int = 0,
    decode_on_device: bool = False,
    persist: bool = True,
    device: torch.device | str = "cpu",
) -> CachedFeatureDataModule:
    """The :class:`CachedFeatureDataModule` of a run (cache under ``<cache dir>/features``;
    ``persist=False``: memory only)."""
    return CachedFeatureDataModule(
        images,
        model.backbone,
        cache_dir=context.cache_dir / "features" if persist else None,
        cache_max_gb=context.cache_max_gb,
        cache_lock_timeout_h=context.cache_lock_timeout_h,
        views=views,
        seed=context.seed,
        precision=context.precision,
        device=device,
        decode_on_device=decode_on_device,
        channels_last=context.channels_last,
        backbone_info=model.backbone.describe(),
    )
