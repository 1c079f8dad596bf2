"""models/predictions.py: the DDP ranks' shares of a test loop merge into every test image once."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from tlresearch.models.predictions import merge_rank_shares


def test_rank_shares_merge_into_each_image_once_without_the_samplers_padding() -> None:
    n, world, classes = 7, 3, 4  # 7 images on 3 ranks: the sampler pads to 9, repeating images 0 and 1
    probs = torch.softmax(torch.randn(n, classes, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(n) % classes
    shares = [list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False)) for r in range(world)]
    assert sum(map(len, shares)) == 9  # what Lightning's test loop really runs through
    record = merge_rank_shares([probs[s] for s in shares], [labels[s] for s in shares], n)
    assert record["indices"].tolist() == list(range(n))
    torch.testing.assert_close(record["probs"], probs)
    assert record["labels"].tolist() == labels.tolist()


def test_one_process_keeps_the_loader_order() -> None:
    probs, labels = torch.full((5, 2), 0.5), torch.tensor([0, 1, 1, 0, 1])
    for length in (5, 0):  # 0: the dataset's length is unknown
        record = merge_rank_shares([probs], [labels], length)
        assert record["indices"].tolist() == [0, 1, 2, 3, 4] and record["labels"].tolist() == labels.tolist()
