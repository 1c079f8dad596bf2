"""Adversarial examples: small changes to a real image that change the network's answer.

Methods (``adversarial.method``):

* ``fgsm`` — one step of size ε along the gradient's sign (L∞) or direction (L2).
  Goodfellow et al., 2015.
* ``pgd`` — projected gradient descent inside the ε-ball around the source, from a random
  start, with restarts. Madry et al., 2018.
* ``lesson`` — the method of the transfer-learning lesson of Microsoft's AI-for-Beginners
  course (AdversarialCat notebook): an optimiser (SGD, lr 1) on the pixels, minimising the
  cross-entropy toward the target plus an optional TV penalty; no ε-ball ("unconstrained"),
  only the [0, 1] pixel range.

All methods track, per image, the best iterate (largest success margin, see
:func:`~tlresearch.imageopt.objectives.success_margin`) and the first step at which the image
fooled the network; with ``early_stop`` an image stops being updated once it succeeds (for
the projected attacks it also leaves the batch, so later steps are cheaper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tlresearch.core.config import check_choice, parse_amount, require
from tlresearch.imageopt.network import FrozenClassifier
from tlresearch.imageopt.objectives import attack_loss, success_margin
from tlresearch.imageopt.optim import OptimizerSettings, make_optimizer
from tlresearch.imageopt.param import PixelImage
from tlresearch.imageopt.regularizers import Regularizers

METHODS = ("pgd", "fgsm", "lesson")
NORMS = ("linf", "l2")


def _lesson_optimizer() -> OptimizerSettings:
    return OptimizerSettings(name="sgd", lr=1.0)


@dataclass(frozen=True)
class AttackSettings:
    """Settings of the adversarial task (``adversarial.*`` in conf/visualize.yaml).

    ``eps`` and ``step_size`` accept fractions such as ``"4/255"``; after validation they are
    floats. ``step_size: None`` means ``2.5 * eps / steps`` (Madry et al.).
    """

    method: str = "pgd"
    norm: str = "linf"
    eps: Any = "4/255"
    step_size: Any = "1/255"
    steps: int = 40
    random_start: bool = True
    restarts: int = 1
    early_stop: bool = True
    objective_weight: float = 1.0
    optimizer: OptimizerSettings = field(default_factory=_lesson_optimizer)
    regularizers: Regularizers = field(default_factory=Regularizers)

    def validate(self, key: str) -> None:
        check_choice(f"{key}.method", self.method, METHODS)
        check_choice(f"{key}.norm", self.norm, NORMS)
        eps = parse_amount(self.eps, f"{key}.eps")
        require(eps > 0, f"{key}.eps", self.eps, "the perturbation budget must be > 0, e.g. 4/255 (L∞) or 0.5 (L2).")
        object.__setattr__(self, "eps", eps)
        if self.step_size is not None:
            step = parse_amount(self.step_size, f"{key}.step_size")
            require(step > 0, f"{key}.step_size", self.step_size, "use a step > 0, e.g. 1/255, or null for 2.5·eps/steps.")
            object.__setattr__(self, "step_size", step)
        require(self.steps >= 1, f"{key}.steps", self.steps, "use at least 1 step.")
        require(self.restarts >= 1, f"{key}.restarts", self.restarts, "use at least 1 (random) restart.")
        require(self.objective_weight > 0, f"{key}.objective_weight", self.objective_weight, "use a weight > 0.")

    @property
    def alpha(self) -> float:
        """The step size of the projected attacks."""
        if self.method == "fgsm":
            return float(self.eps)
        return float(self.step_size) if self.step_size is not None else 2.5 * float(self.eps) / self.steps

    @property
    def iterations(self) -> int:
        """Gradient steps per restart (FGSM: one)."""
        return 1 if self.method == "fgsm" else self.steps

    @property
    def starts(self) -> int:
        """Number of (random) starts: FGSM and the lesson method start once, from the source."""
        return self.restarts if self.method == "pgd" else 1

    @property
    def random_init(self) -> bool:
        return self.random_start and self.method == "pgd"


@dataclass
class AttackResult:
    """Per image: the best iterate, whether it fools the network (float pixels), and the
    first step at which it did (``-1``: never)."""

    images: torch.Tensor
    success: torch.Tensor
    steps_to_success: torch.Tensor


class BestIterate:
    """Keeps, per image, the iterate with the largest success margin and the first success step."""

    def __init__(self, sources: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> None:
        self.images = sources.detach().clone()
        self.labels, self.targets = labels, targets
        self.margin = torch.full((len(sources),), float("-inf"), device=sources.device)
        self.first_success = torch.full((len(sources),), -1, dtype=torch.long, device=sources.device)

    @property
    def succeeded(self) -> torch.Tensor:
        """Which images have fooled the network at some iterate."""
        return self.first_success >= 0

    @torch.no_grad()
    def update(self, images: torch.Tensor, logits: torch.Tensor, index: torch.Tensor, step: int) -> None:
        """Record the iterate ``images`` of the batch rows ``index`` (their logits given)."""
        margin = success_margin(logits.float(), self.labels[index], self.targets[index])
        better = margin > self.margin[index]
        self.images[index[better]] = images[better].to(self.images.dtype)
        self.margin[index[better]] = margin[better]
        newly = (margin > 0) & (self.first_success[index] < 0)
        self.first_success[index[newly]] = step

    def result(self) -> AttackResult:
        return AttackResult(self.images, self.margin > 0, self.first_success)


# ----------------------------------------------------------------------------- geometry


def _per_image_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm``: the sign (L∞) or the unit vector (L2)."""
    return grad.sign() if norm == "linf" else grad / _per_image_norm(grad)


def project(images: torch.Tensor, sources: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ε-ball around ``sources`` and into [0, 1] (the order keeps both:
    clipping to [0, 1] only shrinks each coordinate's distance to a source inside [0, 1])."""
    delta = images - sources
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_image_norm(delta)).clamp(max=1.0)
    return (sources + delta).clamp(0, 1)


def random_start(sources: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniform point of the L∞ ball, or a random direction at a uniform radius of the L2 ball."""
    shape, device = sources.shape, sources.device
    if norm == "linf":
        delta = (2 * torch.rand(shape, generator=generator, device=device) - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator, device=device)
        radius = torch.rand(shape[0], generator=generator, device=device).view(-1, *([1] * (len(shape) - 1)))
        delta = direction / _per_image_norm(direction) * radius * eps
    return project(sources + delta, sources, eps, norm)


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class AttackProblem:
    """What an attack works on: the frozen network, the source images (``[N, 3, H, W]`` in
    [0, 1]), their true classes and the target classes (``-1``: untargeted)."""

    network: FrozenClassifier
    sources: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor


def projected_attack(problem: AttackProblem, settings: AttackSettings, generator: torch.Generator) -> AttackResult:
    """FGSM or PGD (L∞ or L2) with random start, restarts, per-image early stop, best iterate."""
    network, sources, labels, targets = problem.network, problem.sources, problem.labels, problem.targets
    tracker = BestIterate(sources, labels, targets)
    eps, alpha, steps = float(settings.eps), settings.alpha, settings.iterations
    everyone = torch.arange(len(sources), device=sources.device)
    for restart in range(settings.starts):
        active = everyone[~tracker.succeeded] if settings.early_stop else everyone
        if active.numel() == 0:
            break
        src = sources[active]
        x = random_start(src, eps, settings.norm, generator) if settings.random_init else src.clone()
        for step in range(steps + 1):
            x = x.detach().requires_grad_(True)
            logits = network(x)
            if step > 0 or settings.random_init:  # the unperturbed source is no candidate
                tracker.update(x.detach(), logits.detach(), active, restart * steps + step)
            if step == steps:
                break
            keep = ~tracker.succeeded[active] if settings.early_stop else torch.ones_like(active, dtype=torch.bool)
            if not keep.any():
                break
            loss = attack_loss(logits[keep].float(), labels[active[keep]], targets[active[keep]]).sum()
            (grad,) = torch.autograd.grad(loss, x)
            x, src, active = x.detach()[keep], src[keep], active[keep]
            x = project(x - alpha * ascent_direction(grad[keep], settings.norm), src, eps, settings.norm)
    return tracker.result()


def lesson_attack(problem: AttackProblem, settings: AttackSettings, generator: torch.Generator) -> AttackResult:
    """The AI-for-Beginners recipe: an optimiser on the pixels, ``w·CE(target) + priors``,
    clamped to [0, 1] and otherwise unconstrained."""
    del generator  # deterministic: starts from the source image
    network, sources, labels, targets = problem.network, problem.sources, problem.labels, problem.targets
    param = PixelImage(sources)
    optimizer = make_optimizer(settings.optimizer, param.parameters())
    tracker = BestIterate(sources, labels, targets)
    everyone = torch.arange(len(sources), device=sources.device)
    for step in range(settings.steps + 1):
        images = param()
        logits = network(images)
        if step > 0:
            tracker.update(images.detach(), logits.detach(), everyone, step)
        if step == settings.steps or (settings.early_stop and tracker.succeeded.all()):
            break
        loss = settings.objective_weight * attack_loss(logits.float(), labels, targets)
        if settings.regularizers.active_at(step, settings.steps):
            loss = loss + settings.regularizers(images, sources)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        param.after_step()
        if settings.early_stop:
            param.freeze_images(tracker.succeeded, tracker.images)
    return tracker.result()


def run_attack(
    network: FrozenClassifier,
    sources: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    settings: AttackSettings,
    generator: torch.Generator,
) -> AttackResult:
    """Attack ``sources`` (``[N, 3, H, W]`` in [0, 1]) with ``settings.method``.

    ``labels`` are the true classes; ``targets`` the target classes, ``-1`` for untargeted.
    """
    attack = lesson_attack if settings.method == "lesson" else projected_attack
    return attack(AttackProblem(network, sources, labels, targets), settings, generator)
