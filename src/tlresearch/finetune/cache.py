"""Frozen-backbone feature cache: run the backbone once, train the head on tensors.

While the backbone is frozen (a linear probe) and the training images are not randomly
augmented, every epoch feeds the head the very same features. They are computed once per
(backbone weights, dataset files, split, transform, views, precision, decoder), stored under
``paths.cache_dir/features/<key>.pt`` (written atomically, described by ``<key>.json``) and
reused by every later run and sweep job with the same key. With ``finetune.cache_views=K``,
K randomly augmented views of each training image are stored instead and epoch ``e`` trains
on view ``e mod K`` (each view is seeded per image, so it does not depend on workers or
devices).

:class:`CachedFeatureDataModule` wraps an image DataModule and serves ``([N, F] features,
labels)`` batches in the same order (same batch size, same seeded shuffle) as the image
loaders; :meth:`TransferClassifier.features` passes ``[N, F]`` tensors straight to the head.
Under DDP every rank extracts a disjoint shard and rank 0 merges them.

:func:`maybe_cache_features` is the train task's one decision point: it logs why the cache
does or does not apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tlresearch.data.datamodule import ImageClassificationDataModule, SplitLoaders
from tlresearch.data.images import ImageListDataset, Sample
from tlresearch.data.sampler import SeededIndex, mix_seed, seeded_rng, shuffled_loader
from tlresearch.data.transforms import Preprocessing, eval_transform, train_transform
from tlresearch.core.errors import ConfigError
from tlresearch.models.performance import autocast_for, channels_last_wanted, to_channels_last
from tlresearch.core.files import atomic_write, write_json_atomic

log = logging.getLogger(__name__)

#: Bump when the stored layout or the extraction changes, so old files are not reused.
CACHE_FORMAT = 1
#: On CUDA, cached features move to the GPU when they take at most this share of free memory.
_GPU_RESIDENT_SHARE = 0.25


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
    """A hash of the samples in order: relative path, label, and the file's size and mtime
    (a file replaced in place changes the key)."""
    digest = hashlib.blake2b(digest_size=20)
    for sample in samples:
        try:
            st = os.stat(sample.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
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


def feature_key(weights_digest: str, samples: Sequence[Sample], spec: FeatureSpec, backbone_info: dict | None = None) -> tuple[str, dict[str, Any]]:
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
# Stored features
# --------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """``features[view, i]`` is the feature vector of sample ``i``; ``labels[i]`` its label."""

    features: torch.Tensor  # [views, N, F], float32
    labels: torch.Tensor  # [N], int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: torch.device | str) -> "FeatureSet":
        return FeatureSet(self.features.to(device), self.labels.to(device))


class FeatureCache:
    """Feature files under ``root``: ``<key>.pt`` (tensors) and ``<key>.json`` (what they are).

    ``root=None`` keeps nothing on disk (every call extracts).
    """

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = None if root is None else Path(os.path.expanduser(str(root)))

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / f"{key}.pt"

    def load(self, key: str) -> FeatureSet | None:
        """The stored features of ``key``, or None when absent or unreadable (then re-extracted)."""
        if self.root is None or not self.path(key).is_file():
            return None
        try:
            data = torch.load(self.path(key), map_location="cpu", weights_only=True)
            if data.get("format") != CACHE_FORMAT or data.get("key") != key:
                return None
            return FeatureSet(data["features"], data["labels"])
        except Exception as error:  # noqa: BLE001 - a damaged file is only a cache miss
            log.warning("Ignoring the unreadable feature file %s (%s); extracting again.", self.path(key), error)
            return None

    def save(self, key: str, features: FeatureSet, description: dict[str, Any]) -> None:
        """Write ``features`` atomically (readers see the whole file or none), then its description."""
        if self.root is None:
            return
        payload = {"format": CACHE_FORMAT, "key": key, "features": features.features.contiguous(), "labels": features.labels}
        atomic_write(self.path(key), lambda tmp: torch.save(payload, tmp))
        write_json_atomic(self.root / f"{key}.json", {**description, "shape": list(features.features.shape)})

    def shard_path(self, key: str, rank: int, world: int) -> Path:
        assert self.root is not None
        return self.root / "shards" / f"{key}.{rank}-of-{world}.pt"


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
    samples: Sequence[Sample], indices: Sequence[int], spec: FeatureSpec, view: int, batch_size: int, num_workers: int, pin_memory: bool
) -> Iterator[torch.Tensor]:
    """Input batches decoded and transformed by the data pipeline (PIL, in DataLoader workers)."""
    dataset = _ViewDataset(ImageListDataset(samples), spec.transform, spec.seed, view)
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
    for x, _ in loader:
        yield x


def extract_features(
    backbone: nn.Module,
    samples: Sequence[Sample],
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
                    from tlresearch.data.gpu_decode import device_decoded_batches

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

    With ``world > 1`` rank 0 decides whether the cache holds them (``broadcast`` shares its
    answer, so every rank takes the same path even while another job writes the file); on a
    miss each rank extracts the indices ``rank, rank + world, ...``, writes its shard, and
    rank 0 merges the shards into the cache file that every rank then reads.
    """
    cached = cache.load(key) if rank == 0 else None
    hit = cached is not None and torch.equal(cached.labels, labels)
    if broadcast(hit):
        return (cached if rank == 0 else cache.load(key)), True  # type: ignore[return-value]
    if world == 1:
        features = FeatureSet(extract(list(range(n))), labels)
        cache.save(key, features, description)
        return features, False
    if cache.root is None:
        raise ConfigError("finetune.cache_features=false cannot be combined with several processes: the ranks share features through the cache directory.")
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
    loaded = cache.load(key)
    if loaded is None:
        raise RuntimeError(f"rank {rank}: the merged feature file {cache.path(key)} is missing; is paths.cache_dir shared by every process?")
    return loaded, False


# --------------------------------------------------------------------------------------------
# The DataModule of cached features
# --------------------------------------------------------------------------------------------


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
        views: ``0``: the training split uses the deterministic eval transform; ``K >= 1``: K
            augmented views per training image with the DataModule's training augmentation.
        seed: seeds the augmented views.
        precision, device: used when no Trainer is attached (with one, its precision and
            device are used, and under DDP its ranks share the extraction).
        decode_on_device: decode JPEGs with ``torchvision.io.decode_jpeg`` on the device.
        channels_last: the ``model.channels_last`` setting for the extraction forward pass.
        backbone_info: the backbone's ``describe()``, recorded in the key's description.
    """

    def __init__(
        self,
        images: ImageClassificationDataModule,
        backbone: nn.Module,
        *,
        cache_dir: str | os.PathLike | None,
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
        self.cache = FeatureCache(cache_dir)
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

    def describe(self) -> dict[str, Any]:
        return {**self.images.describe(), "feature_cache": {"dir": str(self.cache.root) if self.cache.root else None, "views": self.views, "splits": self.stats}}

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
            decode_on_device=self.decode_on_device and not augmented,
            preprocessing=pre,
        )

    def _trainer_or(self, what: str, default: Any) -> Any:
        trainer = self.trainer
        if trainer is None:
            return default
        return {"precision": trainer.precision, "device": trainer.strategy.root_device}.get(what, default)

    def _load_or_extract(self, split: str) -> FeatureSet:
        started = time.perf_counter()
        samples = self.images.dataset(split).samples
        spec = self.spec(split)
        if self._weights_digest is None:
            self._weights_digest = module_digest(self.backbone)
        key, description = feature_key(self._weights_digest, samples, spec, self.backbone_info)
        description["split"] = split
        trainer = self.trainer
        device = torch.device(self._trainer_or("device", self.device))
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        barrier = trainer.strategy.barrier if trainer is not None else (lambda: None)
        broadcast = trainer.strategy.broadcast if trainer is not None else (lambda value: value)
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)

        def extract(indices: list[int]) -> torch.Tensor:
            return extract_features(
                self.backbone, samples, spec, device=device, indices=indices, batch_size=self.images.batch_size,
                num_workers=self.images.num_workers, pin_memory=self.images.pin_memory, channels_last=self.channels_last,
            )

        features, hit = load_or_extract(
            self.cache, key, description, len(samples), extract, labels, rank=rank, world=world, barrier=barrier, broadcast=broadcast
        )
        seconds = time.perf_counter() - started
        self.stats[split] = {"key": key, "hit": hit, "seconds": round(seconds, 3), "shape": list(features.features.shape)}
        where = f" ({self.cache.path(key)})" if self.cache.root else ""
        log.info("%s features of %d images: %s in %.1f s%s", split, len(samples), "read from the cache" if hit else "extracted", seconds, where)
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


# --------------------------------------------------------------------------------------------
# The train task's decision
# --------------------------------------------------------------------------------------------


def cache_decision(cfg: DictConfig, model: Any, datamodule: Any) -> tuple[bool, str]:
    """``(applies, why)``: whether training can run on cached features, and the reason."""
    finetune = cfg.finetune
    if not finetune.get("cache_features", True):
        return False, "finetune.cache_features=false"
    training_blocks = [g.name for g in model.groups if g.name != "head" and g.start_epoch is not None]
    if training_blocks:
        return False, f"backbone blocks train in this schedule ({', '.join(training_blocks[:3])}{', ...' if len(training_blocks) > 3 else ''}): features change every step"
    if not isinstance(datamodule, ImageClassificationDataModule):
        return False, f"the data module {type(datamodule).__name__} is not an image-classification DataModule"
    views = cached_views(cfg, datamodule)
    if datamodule.augmentation.enabled and views == 0:
        return False, (
            "training augmentation is on (data.augment.enabled=true), so every epoch sees new random crops; "
            "set data.augment.enabled=false (the literature's linear probe) or finetune.cache_views=K to cache K augmented views"
        )
    if views:
        return True, f"backbone frozen: {views} augmented views per training image extracted once"
    return True, "backbone frozen and no random augmentation: features extracted once"


def cached_views(cfg: DictConfig, datamodule: ImageClassificationDataModule) -> int:
    """``finetune.cache_views`` (validated by :class:`LinearProbe`), or 0 without training
    augmentation, where every view would be the same image."""
    return int(cfg.finetune.get("cache_views", 0) or 0) if datamodule.augmentation.enabled else 0


def cached_datamodule(cfg: DictConfig, model: Any, images: ImageClassificationDataModule, *, views: int = 0, persist: bool = True, device: torch.device | str = "cpu") -> CachedFeatureDataModule:
    """The :class:`CachedFeatureDataModule` of a training config (cache under ``paths.cache_dir/features``)."""
    model_cfg = cfg.get("model") or {}
    return CachedFeatureDataModule(
        images,
        model.backbone,
        cache_dir=Path(str(cfg.paths.cache_dir)) / "features" if persist else None,
        views=views,
        seed=int(cfg.seed),
        precision=str(cfg.trainer.get("precision", "32-true")),
        device=device,
        decode_on_device=bool(cfg.finetune.get("decode_on_device", False)),
        channels_last=model_cfg.get("channels_last", "auto"),
        backbone_info=model.backbone.describe(),
    )


def maybe_cache_features(cfg: DictConfig, model: Any, datamodule: Any) -> Any:
    """The train task's DataModule: cached features when they apply, else ``datamodule``; logs why."""
    applies, why = cache_decision(cfg, model, datamodule)
    if not applies:
        log.info("Feature cache not used: %s.", why)
        return datamodule
    cached = cached_datamodule(cfg, model, datamodule, views=cached_views(cfg, datamodule))
    log.info("Feature cache used: %s (%s).", why, cached.cache.root)
    return cached
