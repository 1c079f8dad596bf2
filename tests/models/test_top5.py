"""Top-5 accuracy is top-5, on every split and every path (issue 10).

torchmetrics' MetricCollection merged metrics whose states were equal after the first update:
macro top-1 and micro top-5 accuracy keep the same per-class states, equal whenever no label of
that first batch sits at rank 2-5. From then on top-5 shared top-1's state and reported top-1
accuracy to the last digit. The data below make the first batch of every split such a batch
(each label at rank 1 or last) and put every later label at rank 2, so top-5 must be far above
top-1: 0.875 against 0.125.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tlresearch.models.classifier import TransferClassifier, classification_metrics
from tlresearch.protocols.logistic_solver import LinearSolution, score

CLASSES, FEATURES, BATCH, BATCHES = 37, 512, 16, 4  # resnet18's feature width


def crafted(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose first ``CLASSES`` dimensions are the logits (the head is the identity on them).

    Batch 0: every label at rank 1 (even rows) or last (odd rows): top-1 and top-5 statistics coincide.
    Later batches: another class at rank 1, the label at rank 2 (a top-5 hit, a top-1 miss).
    """
    g = torch.Generator().manual_seed(seed)
    n = BATCHES * BATCH
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    logits = torch.rand(n, CLASSES, generator=g)
    rows = torch.arange(n)
    first = rows < BATCH
    logits[rows[first & (rows % 2 == 0)], labels[first & (rows % 2 == 0)]] = 5.0
    logits[rows[first & (rows % 2 == 1)], labels[first & (rows % 2 == 1)]] = -5.0
    later = ~first
    logits[rows[later], (labels[later] + 1) % CLASSES] = 5.0
    logits[rows[later], labels[later]] = 4.0
    features = torch.zeros(n, FEATURES)
    features[:, :CLASSES] = logits
    return features, labels


# Of 64 images: the 8 rank-1 labels of batch 0 are top-1 hits; those 8 and the 48 rank-2 labels are top-5 hits.
TOP1, TOP5 = 8 / 64, 56 / 64


def test_a_collection_keeps_top5_apart_after_a_first_batch_that_cannot_tell_them_apart():
    features, labels = crafted(0)
    metrics = classification_metrics(CLASSES, "val")
    for i in range(BATCHES):
        metrics.update(features[i * BATCH:(i + 1) * BATCH, :CLASSES], labels[i * BATCH:(i + 1) * BATCH])
    result = {k: float(v) for k, v in metrics.compute().items()}
    assert result["val/acc"] == pytest.approx(TOP1)
    assert result["val/top5"] == pytest.approx(TOP5)
    assert all(len(group) == 1 for group in metrics.compute_groups.values())


def test_the_epoch_loop_reports_top5_on_train_val_and_test():
    """Feature inputs, as the feature cache feeds them (TransferClassifier.features passes [N, F]
    through): the same training, validation and test steps as image inputs."""
    model = TransferClassifier(
        backbone={"_target_": "tlresearch.models.torchvision_backbones.create_backbone", "name": "resnet18", "weights": None},
        num_classes=CLASSES,
        finetune={"_target_": "tlresearch.finetune.linear_probe.LinearProbe"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1e-12},  # the head stays the identity
    )
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].weight[:, :CLASSES] = torch.eye(CLASSES)
        model.head[1].bias.zero_()
    loaders = {split: DataLoader(TensorDataset(*crafted(seed)), batch_size=BATCH)
               for split, seed in (("train", 1), ("val", 2), ("test", 3))}
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=2)
    trainer.fit(model, loaders["train"], loaders["val"])
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(model, loaders["test"], verbose=False)
    got.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    for split in ("train", "val", "test"):
        assert got[f"{split}/acc"] == pytest.approx(TOP1), split
        assert got[f"{split}/top5"] == pytest.approx(TOP5), split


def test_the_logistic_protocol_reports_top5():
    features, labels = crafted(4)
    weight = torch.zeros(CLASSES, FEATURES)
    weight[:, :CLASSES] = torch.eye(CLASSES)
    scores = score(LinearSolution(weight, torch.zeros(CLASSES), l2=0.0), features, labels, CLASSES, "val")
    assert scores["val/acc"] == pytest.approx(TOP1)
    assert scores["val/top5"] == pytest.approx(TOP5)
