"""The test loop's per-image predictions, gathered from every DDP rank into one record.

A test loop collects, per batch, the softmax probabilities and the labels
(:class:`TestPredictions`); at the end of the epoch :meth:`TestPredictions.record` gives
``{"probs": [N, C], "labels": [N], "indices": [N]}``, ``indices`` into the test dataset, each
test image exactly once, sorted by index. Under DDP every rank calls it (it gathers): the
test loader does not shuffle, so Lightning's ``DistributedSampler`` hands rank ``r`` of ``W``
the samples ``r, r + W, r + 2W, ...`` and pads the last round by repeating the first samples
(position ``k`` of rank ``r`` is sample ``(k * W + r) mod N``); :func:`merge_rank_shares`
drops that padding. The run's records (``predictions.csv``, the confidence intervals) and the
W&B predictions table read the record (results/run_predictions.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torchmetrics.utilities.distributed import gather_all_tensors

#: The record of a test loop: ``probs`` [N, C] float, ``labels`` [N] and ``indices`` [N] int64.
Record = dict[str, torch.Tensor]


class TestPredictions:
    """Collects a test loop's predictions batch by batch; :meth:`record` merges the ranks."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self) -> None:
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reset(self) -> None:
        self._batches = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch: its logits (kept as float32 probabilities on the CPU) and labels."""
        self._batches.append((logits.detach().float().softmax(dim=-1).cpu(), labels.detach().cpu()))

    def record(self, module: pl.LightningModule, num_classes: int, dataset_length: int) -> Record | None:
        """Every test image once (all ranks gathered, padding dropped); None when nothing was
        tested. Every rank must call it under DDP (it is a collective operation).

        ``dataset_length`` is the test dataset's length (0 when unknown: then each rank's samples
        are taken as the whole test set in loader order, which they are without DDP)."""
        probs = torch.cat([p for p, _ in self._batches]) if self._batches else torch.zeros(0, num_classes)
        labels = torch.cat([y for _, y in self._batches]) if self._batches else torch.zeros(0, dtype=torch.long)
        self._batches = []
        trainer = module.trainer
        world = trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            device = module.device  # NCCL gathers CUDA tensors only
            shares = [gather_all_tensors(t.to(device)) for t in (probs, labels)]
            probs_by_rank = [p.cpu() for p in shares[0]]
            labels_by_rank = [y.cpu() for y in shares[1]]
        else:
            probs_by_rank, labels_by_rank = [probs], [labels]
        if sum(len(y) for y in labels_by_rank) == 0:
            return None
        return merge_rank_shares(probs_by_rank, labels_by_rank, dataset_length)


def merge_rank_shares(probs: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], dataset_length: int) -> Record:
    """Merge each rank's share (rank ``r``'s ``k``-th sample is dataset index ``k * W + r``) into
    one record sorted by index, dropping the ``DistributedSampler``'s padding (positions at or
    beyond ``dataset_length``, which repeat the first samples). ``dataset_length=0`` (unknown)
    keeps every position."""
    world = len(probs)
    indices = [torch.arange(len(y)) * world + rank for rank, y in enumerate(labels)]
    flat_indices, flat_probs, flat_labels = torch.cat(indices), torch.cat(list(probs)), torch.cat(list(labels))
    keep = flat_indices < dataset_length if dataset_length > 0 else torch.ones_like(flat_indices, dtype=torch.bool)
    order = torch.argsort(flat_indices[keep])
    return {"probs": flat_probs[keep][order], "labels": flat_labels[keep][order].long(), "indices": flat_indices[keep][order]}


def confusion_from_record(record: Record, num_classes: int) -> torch.Tensor:
    """The ``[C, C]`` confusion matrix (rows: true class, columns: predicted) of a record: each
    test image counted once, so under DDP the sampler's padding does not count twice."""
    predicted = record["probs"].argmax(dim=1)
    flat = record["labels"].long() * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
