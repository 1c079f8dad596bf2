"""One process of the concurrent-cache test (``tests/protocols/test_feature_store.py``).

``python -m tests.protocols.cache_worker DATA CACHE OUT`` extracts the features of DATA's
images with a seeded tiny backbone through :func:`load_or_extract`, as a sweep job would:
it waits until every process of the test is ready (``CACHE/../go``), extracts (slowly: each
extraction leaves a marker ``OUT.extracted`` and sleeps, so that the processes overlap) or
reads, and saves what it got to ``OUT``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlresearch.data.images import Sample
from tlresearch.data.transforms import Preprocessing, eval_transform
from tlresearch.protocols.feature_store import FeatureCache
from tlresearch.protocols.features import FeatureSpec, extract_features, feature_key, load_or_extract, module_digest


def tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


@dataclass
class Job:
    """What a job extracts: the images of ``data`` (class folders of JPEGs), by a tiny backbone."""

    backbone: nn.Module
    samples: list[Sample]
    spec: FeatureSpec
    key: str
    description: dict
    labels: torch.Tensor

    def extract(self, indices: list[int]) -> torch.Tensor:
        return extract_features(self.backbone, self.samples, self.spec, indices=indices, batch_size=8)


def job(data: Path) -> Job:
    files = sorted(data.rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    samples = [Sample(str(f), f.relative_to(data).as_posix(), classes.index(f.parent.name), f.parent.name) for f in files]
    backbone = tiny_backbone()
    spec = FeatureSpec(eval_transform(Preprocessing(crop_size=32, resize_size=36)))
    key, description = feature_key(module_digest(backbone), samples, spec)
    return Job(backbone, samples, spec, key, description, torch.tensor([s.label for s in samples]))


def main(data: Path, cache_dir: Path, out: Path) -> None:
    work = job(data)

    def extract(indices: list[int]) -> torch.Tensor:
        out.with_suffix(".extracted").touch()
        time.sleep(1.0)  # long enough that every other process asks for the key meanwhile
        return work.extract(indices)

    out.with_suffix(".ready").touch()
    go = cache_dir.parent / "go"
    while not go.exists():
        time.sleep(0.02)
    features, hit = load_or_extract(FeatureCache(cache_dir), work.key, work.description, len(work.samples), extract, work.labels)
    torch.save({"features": features.features, "labels": features.labels, "hit": hit}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
