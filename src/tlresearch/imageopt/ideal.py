"""Ideal class images: start from noise and optimise the image until the network sees the class.

One call optimises one job: a batch of images (e.g. the seeds of one target) with the job's
random generator, so the result depends on the job alone, never on which device ran it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tlresearch.core.config import check_choice, require
from tlresearch.imageopt.network import FrozenClassifier
from tlresearch.imageopt.objectives import OBJECTIVES, class_loss, diversity_penalty
from tlresearch.imageopt.optim import OptimizerSettings, make_optimizer
from tlresearch.imageopt.param import ParamSettings, make_param
from tlresearch.imageopt.regularizers import Regularizers
from tlresearch.imageopt.transforms import RobustnessTransforms

GREY = 0.5  # anchor of the L1/L2 priors: they pull ideal images toward mid-grey


@dataclass(frozen=True)
class IdealSettings(ParamSettings):
    """Settings of the ideal-image task (``ideal.*`` in conf/visualize.yaml): how the image is
    parameterised (the inherited :class:`ParamSettings` fields), and how it is optimised."""

    objective: str = "logit"
    objective_weight: float = 1.0
    steps: int = 256
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    regularizers: Regularizers = field(default_factory=Regularizers)
    transforms: RobustnessTransforms = field(default_factory=RobustnessTransforms)
    diversity: float = 0.0
    eval_transforms: int = 8

    def validate(self, key: str) -> None:
        super().validate(key)
        check_choice(f"{key}.objective", self.objective, OBJECTIVES)
        require(self.objective_weight > 0, f"{key}.objective_weight", self.objective_weight, "use a weight > 0.")
        require(self.steps >= 1, f"{key}.steps", self.steps, "use at least 1 step.")
        require(self.diversity >= 0, f"{key}.diversity", self.diversity, "use a weight >= 0 (0 switches it off).")
        require(self.eval_transforms >= 0, f"{key}.eval_transforms", self.eval_transforms, "use a count >= 0.")


@dataclass
class IdealResult:
    """Images of one job and how the target logit moved, ``target_logit[i, step]``."""

    images: torch.Tensor
    target_logit: torch.Tensor


def ideal_step_loss(
    network: FrozenClassifier,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: IdealSettings,
    step: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss per image, target logit per image)`` of one step: objective on randomly
    transformed images, plus the priors on the image itself, plus the diversity term."""
    logits, features = network.forward_with_features(settings.transforms(images, generator))
    loss = settings.objective_weight * class_loss(logits, targets, settings.objective)
    if settings.regularizers.active_at(step, settings.steps):
        loss = loss + settings.regularizers(images, GREY)
    if settings.diversity:
        loss = loss + settings.diversity * diversity_penalty(features)
    return loss, logits.detach().gather(1, targets[:, None]).squeeze(1)


def optimize_ideal(
    network: FrozenClassifier, targets: torch.Tensor, settings: IdealSettings, image_size: int, generator: torch.Generator
) -> IdealResult:
    """Optimise ``len(targets)`` images from noise toward their target classes."""
    param = make_param(settings, len(targets), image_size, generator)
    optimizer = make_optimizer(settings.optimizer, param.parameters())
    trace = torch.empty(len(targets), settings.steps, device=targets.device)
    for step in range(settings.steps):
        loss, target_logit = ideal_step_loss(network, param(), targets, settings, step, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        param.after_step()
        trace[:, step] = target_logit
    with torch.no_grad():
        images = param().detach()
    return IdealResult(images=images, target_logit=trace)
