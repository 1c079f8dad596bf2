"""The training epoch's running averages carried through a mid-epoch checkpoint.

The classifier averages its training loss and accuracies over each epoch with torchmetrics
metrics, whose states live outside the weights and are not in checkpoints. A run resumed from a
mid-epoch ``last.ckpt`` would average only the batches after the resume. :func:`capture` puts
the states in the checkpoint (summed over the DDP processes, which all write a checkpoint
together); :func:`restore` gives them back to process 0 only (the others start empty), so the
epoch's value, summed over the processes when it is computed, is the uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import Metric

#: The checkpoint key holding the states.
KEY = "train_epoch_averages"


def mid_training_epoch(trainer: Any) -> bool:
    """Whether a checkpoint written now falls inside a training epoch (after a batch that is not
    its last): the resumed run continues that epoch, so its running averages must go along."""
    if trainer is None or trainer.state.fn != "fit" or trainer.sanity_checking:
        return False
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.current.processed > 0 and not progress.is_last_batch


def capture(metrics: Mapping[str, Metric]) -> dict[str, dict[str, torch.Tensor]]:
    """Each metric's states, summed over the processes (a collective call under DDP), on the CPU."""
    states = {}
    for name, metric in metrics.items():
        metric.sync()  # a no-op in a single process
        states[name] = {state: getattr(metric, state).detach().cpu().clone() for state in metric._defaults}
        metric.unsync(should_unsync=metric._is_synced)
    return states


def restore(metrics: Mapping[str, Metric], states: Mapping[str, Mapping[str, torch.Tensor]], rank: int) -> None:
    """Give process ``rank`` 0 the captured states (the other processes start empty)."""
    for name, metric in metrics.items():
        metric.reset()
        if rank != 0 or name not in states:
            continue
        for state, value in states[name].items():
            setattr(metric, state, value.to(getattr(metric, state).device))
        metric._update_count = 1  # it has been updated: compute() gives the value, without a warning
