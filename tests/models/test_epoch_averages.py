"""A training epoch's running averages through a mid-epoch checkpoint (models/epoch_averages.py)."""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from tlresearch.models.epoch_averages import capture, restore


def metrics() -> dict:
    return {"loss": MeanMetric(), "acc": MulticlassAccuracy(3, average="macro")}


def test_restored_states_continue_the_epoch_on_process_0_only():
    torch.manual_seed(0)
    batches = [(torch.rand(()), torch.randn(4, 3), torch.randint(0, 3, (4,))) for _ in range(5)]
    whole, interrupted = metrics(), metrics()
    for i, (loss, logits, labels) in enumerate(batches):
        whole["loss"].update(loss, weight=4)
        whole["acc"].update(logits, labels)
        if i < 2:  # the batches before the checkpoint
            interrupted["loss"].update(loss, weight=4)
            interrupted["acc"].update(logits, labels)
    states = capture(interrupted)
    resumed, other_rank = metrics(), metrics()
    restore(resumed, states, rank=0)
    restore(other_rank, states, rank=1)
    for loss, logits, labels in batches[2:]:
        resumed["loss"].update(loss, weight=4)
        resumed["acc"].update(logits, labels)
    assert {k: m.compute() for k, m in resumed.items()} == {k: m.compute() for k, m in whole.items()}
    assert all(m._update_count == 0 for m in other_rank.values())  # its share was summed into process 0's
