"""What image optimisation minimises: class objectives, success margins, diversity.

Every function returns one value per image (``[N]``); callers sum over images, so each
image's gradient is its own (batching images is a speed-up, never a change of result).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("logit", "log_softmax", "cross_entropy")
UNTARGETED = -1  # target index of an untargeted attack


def class_loss(logits: torch.Tensor, classes: torch.Tensor, objective: str) -> torch.Tensor:
    """A loss that falls as ``classes`` become more likely, one value per image.

    ``logit``: minus the class logit (activation maximisation's default: the logit cannot be
    raised by lowering the other classes). ``log_softmax``: minus the class log-probability.
    ``cross_entropy``: the cross-entropy toward the class (the lesson's loss; for one-hot
    targets the same number as ``log_softmax``, kept under its own name for the recipe).
    """
    if objective == "logit":
        return -logits.gather(1, classes[:, None]).squeeze(1)
    if objective == "log_softmax":
        return -logits.log_softmax(dim=1).gather(1, classes[:, None]).squeeze(1)
    if objective == "cross_entropy":
        return F.cross_entropy(logits, classes, reduction="none")
    raise ValueError(f"unknown objective {objective!r}; one of {OBJECTIVES}")


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy an attack minimises, per image: toward the target (targeted) or away
    from the true label (untargeted, ``targets == -1``: minus the label's cross-entropy)."""
    targeted = targets >= 0
    toward = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
    away = -F.cross_entropy(logits, labels, reduction="none")
    return torch.where(targeted, toward, away)


def success_margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How far an image is into the attack's goal; > 0 means success, per image.

    Targeted: target logit minus the best other logit. Untargeted: best non-label logit
    minus the label logit.
    """
    targeted = targets >= 0
    goal = torch.where(targeted, targets, labels)
    goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
    others = logits.scatter(1, goal[:, None], float("-inf")).amax(dim=1)
    return torch.where(targeted, goal_logit - others, others - goal_logit)


def diversity_penalty(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of each image's features to the other images' (per image).

    Minimising it pushes images of one job (seeds of one target) toward different features:
    the diversity term of Lucid, computed on the network's pooled features rather than on
    Gram matrices of an intermediate layer.
    """
    n = features.shape[0]
    if n < 2:
        return features.new_zeros(n)
    unit = F.normalize(features.flatten(1), dim=1)
    similarity = unit @ unit.T
    off_diagonal = similarity.sum(dim=1) - similarity.diagonal()
    return off_diagonal / (n - 1)
