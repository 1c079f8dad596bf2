"""Adversarial examples: ε-balls are respected, PGD fools a trained classifier, FGSM hurts it."""

from __future__ import annotations

import pytest
import torch

from tlresearch.core.config import from_node
from tlresearch.imageopt.attacks import AttackSettings, project, random_start, run_attack
from tlresearch.imageopt.images import quantize_8bit
from tlresearch.imageopt.jobs import job_generator
from tlresearch.imageopt.metrics import attack_records, summarize_attack

TOL = 1e-6  # float32 rounding of source + delta


def attack(**node) -> AttackSettings:
    return from_node(AttackSettings, node, "adversarial")


def sources(n: int = 4, size: int = 32) -> torch.Tensor:
    return quantize_8bit(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("norm,eps", [("linf", "8/255"), ("l2", 0.5)])
def test_pgd_stays_inside_its_ball_and_the_unit_range(tiny_network, norm, eps):
    x = sources()
    labels = tiny_network(x).argmax(1)
    settings = attack(method="pgd", norm=norm, eps=eps, step_size="4/255" if norm == "linf" else 0.2, steps=5,
                      restarts=2, early_stop=False)
    result = run_attack(tiny_network, x, labels, torch.full_like(labels, -1), settings, job_generator(0, 0, "cpu"))
    delta = (result.images - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= settings.eps + TOL).all()
    assert (size > 0).all()  # it moved
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_projection_and_random_start_respect_the_ball():
    x = sources(2)
    far = torch.rand_like(x)
    for norm, eps in (("linf", 0.03), ("l2", 1.0)):
        for candidate in (project(far, x, eps, norm), random_start(x, eps, norm, job_generator(0, 0, "cpu"))):
            d = (candidate - x).flatten(1)
            assert ((d.abs().amax(1) if norm == "linf" else d.norm(dim=1)) <= eps + TOL).all()
            assert candidate.min() >= 0 and candidate.max() <= 1


def test_pgd_fools_a_trained_classifier_targeted_and_untargeted(trained_network, trained_classifier):
    x, y = trained_classifier["images"], trained_classifier["labels"]
    assert (trained_network(x).argmax(1) == y).float().mean() >= 0.9  # the classifier works
    settings = attack(method="pgd", eps="16/255", step_size="2/255", steps=20)
    for targets in (torch.full_like(y, -1), (y + 1) % 3):
        result = run_attack(trained_network, x, y, targets, settings, job_generator(0, 0, "cpu"))
        records = attack_records(trained_network, None, x, y, targets, result, torch.arange(len(y)), 0)
        summary = summarize_attack(records)
        assert summary["attack/eligible"] >= 0.9 * len(y)
        assert summary["attack/success_rate"] >= 0.9  # after rounding to 8-bit pixels
        assert summary["attack/linf_mean"] <= 16 / 255 + TOL
        assert 0 < summary["attack/steps_to_success_mean"] <= 20
        assert 0 < summary["attack/ssim_mean"] <= 1
        won = result.steps_to_success[result.success]
        assert (won >= 1).all() and (won <= 20).all()


def test_untargeted_fgsm_lowers_accuracy(trained_network, trained_classifier):
    x, y = trained_classifier["images"], trained_classifier["labels"]
    settings = attack(method="fgsm", eps="8/255")
    result = run_attack(trained_network, x, y, torch.full_like(y, -1), settings, job_generator(0, 0, "cpu"))
    clean = (trained_network(x).argmax(1) == y).float().mean()
    adversarial = (trained_network(quantize_8bit(result.images)).argmax(1) == y).float().mean()
    assert adversarial < clean - 0.2
    assert ((result.images - x).abs().amax() <= 8 / 255 + TOL)


def test_lesson_method_is_unconstrained_and_reaches_the_target(trained_network, trained_classifier):
    x, y = trained_classifier["images"][:4], trained_classifier["labels"][:4]
    targets = (y + 1) % 3
    settings = attack(method="lesson", steps=10, optimizer={"name": "sgd", "lr": 1.0}, regularizers={"tv": 1e-4})
    result = run_attack(trained_network, x, y, targets, settings, job_generator(0, 0, "cpu"))
    assert result.success.all()
    assert torch.equal(trained_network(result.images).argmax(1), targets)
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_early_stop_keeps_the_first_successful_iterate(trained_network, trained_classifier):
    x, y = trained_classifier["images"][:6], trained_classifier["labels"][:6]
    targets = torch.full_like(y, -1)
    stop = run_attack(trained_network, x, y, targets, attack(eps="16/255", step_size="4/255", steps=10), job_generator(0, 0, "cpu"))
    go_on = run_attack(trained_network, x, y, targets, attack(eps="16/255", step_size="4/255", steps=10, early_stop=False),
                       job_generator(0, 0, "cpu"))
    assert stop.success.all() and go_on.success.all()
    assert torch.equal(stop.steps_to_success, go_on.steps_to_success)  # same trajectory up to success
    # without early stop, later iterates went deeper into the wrong class: larger perturbations
    assert (go_on.images - x).abs().sum() > (stop.images - x).abs().sum()
