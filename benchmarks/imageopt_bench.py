"""Image optimisation: the Lightning module vs a plain loop, and our PGD vs torchattacks' PGD.

    python benchmarks/imageopt_bench.py [--rounds 5] [--steps 40] [--images 96]

1. Steps per second. The same work on both sides: ideal images of 4 jobs x 8 images (pixel
   parameterisation, Adam lr 0.05, maximise the target logit) against the same frozen network
   (timm ``test_resnet``, random weights, 64 px). tlresearch runs ``trainer.predict`` on
   :class:`ImageOptModule` with its job dataset and result writer (per-job records included,
   random-transform evaluation off); the plain side is ``for step: loss = -logits[target];
   backward; step; clamp`` per job. Target: tlresearch / plain >= 0.95 image-steps/s.
2. PGD. A small classifier trained on synthetic stripe images (timm ``test_resnet``, 32 px, the
   tests' fixture) is attacked, untargeted, L∞ ε = 8/255, step 2/255, random start, by our
   ``projected_attack`` (with and without per-image early stop) and by ``torchattacks.PGD`` with
   the same settings, on the same images; success is counted after rounding to 8-bit pixels.
   Targets: success rate equal (within noise), time ours / torchattacks <= 1.05 without early
   stop, < 1 with it.

Sides alternate within each round (ABAB), medians are reported, ratios last.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
import torch

from benchmarks._common import WORKSPACE, interleave, median, report, set_threads
from tests.imageopt.stripes import stripe_images, train_stripe_classifier
from tlresearch.core.config import from_node
from tlresearch.imageopt.attacks import AttackProblem, AttackSettings, projected_attack
from tlresearch.imageopt.ideal import IdealSettings
from tlresearch.imageopt.images import quantize_8bit
from tlresearch.imageopt.jobs import JobDataset, build_ideal_jobs, job_generator, job_loader
from tlresearch.imageopt.module import ImageOptModule, JobResultWriter, merge_job_results
from tlresearch.imageopt.network import FrozenClassifier, network_from_backbone, network_from_checkpoint
from tlresearch.imageopt.param import noise_images

IDEAL_SIZE = 64
JOBS, IMAGES_PER_JOB = 4, 8


# ----------------------------------------------------------------------------- 1. steps per second


def ideal_settings(steps: int) -> IdealSettings:
    return from_node(IdealSettings, {"steps": steps, "eval_transforms": 0}, "ideal")


def module_side(network: FrozenClassifier, settings: IdealSettings) -> list[float]:
    """Image-steps per second of ``trainer.predict`` over the jobs (writer and merge included)."""
    jobs = build_ideal_jobs(list(range(JOBS)), seeds=IMAGES_PER_JOB, batch_size=IMAGES_PER_JOB)
    writer = JobResultWriter(WORKSPACE / "jobs")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, callbacks=[writer])
    module = ImageOptModule(network, settings, IDEAL_SIZE, seed=0)
    start = time.perf_counter()
    trainer.predict(module, dataloaders=job_loader(JobDataset(jobs)), return_predictions=False)
    merge_job_results(writer.directory, [j.job_id for j in jobs])
    return [JOBS * IMAGES_PER_JOB * settings.steps / (time.perf_counter() - start)]


def plain_side(network: FrozenClassifier, settings: IdealSettings) -> list[float]:
    """The same optimisation as a hand-written loop, job by job."""
    start = time.perf_counter()
    for job_id, target in enumerate(range(JOBS)):
        generator = job_generator(0, job_id, "cpu")
        pixels = noise_images(IMAGES_PER_JOB, IDEAL_SIZE, generator, "normal", 0.1).requires_grad_(True)
        optimizer = torch.optim.Adam([pixels], lr=settings.optimizer.lr)
        targets = torch.full((IMAGES_PER_JOB,), target)
        for _ in range(settings.steps):
            loss = -network(pixels).gather(1, targets[:, None]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                pixels.clamp_(0, 1)
        with torch.no_grad():
            network(quantize_8bit(pixels)).softmax(1)
    return [JOBS * IMAGES_PER_JOB * settings.steps / (time.perf_counter() - start)]


# ----------------------------------------------------------------------------- 2. PGD


def torchattacks_side(network, images, labels, eps, alpha, steps) -> tuple[float, float]:
    import torchattacks

    attack = torchattacks.PGD(network, eps=eps, alpha=alpha, steps=steps, random_start=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    adversarial = attack(images, labels)
    seconds = time.perf_counter() - start
    return seconds, success_rate(network, adversarial, labels)


def ours_side(network, images, labels, eps, alpha, steps, early_stop: bool) -> tuple[float, float]:
    settings = from_node(AttackSettings, {"method": "pgd", "eps": eps, "step_size": alpha, "steps": steps,
                                          "early_stop": early_stop}, "adversarial")
    start = time.perf_counter()
    result = projected_attack(AttackProblem(network, images, labels, torch.full_like(labels, -1)), settings, job_generator(0, 0, "cpu"))
    seconds = time.perf_counter() - start
    return seconds, success_rate(network, result.images, labels)


@torch.no_grad()
def success_rate(network: FrozenClassifier, adversarial: torch.Tensor, labels: torch.Tensor) -> float:
    """Untargeted success after 8-bit rounding, over all images (all are correctly classified)."""
    return float((network(quantize_8bit(adversarial)).argmax(1) != labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="ideal-image steps per job")
    parser.add_argument("--images", type=int, default=96, help="images attacked by PGD")
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    set_threads(args.threads)
    pl.seed_everything(0, verbose=False)

    # 1. the module vs a plain loop
    network = network_from_backbone(
        {"_target_": "tlresearch.models.timm_backbones.create_backbone", "name": "test_resnet",
         "weights": None, "input_size": IDEAL_SIZE}
    )
    settings = ideal_settings(args.steps)
    rates = interleave({"module": lambda: module_side(network, settings), "plain": lambda: plain_side(network, settings)}, args.rounds)
    module_rate, plain_rate = median(rates["module"]), median(rates["plain"])

    # 2. our PGD vs torchattacks
    classifier = network_from_checkpoint(train_stripe_classifier(WORKSPACE / "stripes.ckpt"))
    images, labels = stripe_images(args.images // 3, torch.Generator().manual_seed(1))
    keep = classifier(images).argmax(1) == labels  # attack correctly classified images only
    images, labels = images[keep], labels[keep]
    eps, alpha = 8 / 255, 2 / 255
    pgd = interleave(
        {
            "torchattacks": lambda: [torchattacks_side(classifier, images, labels, eps, alpha, args.pgd_steps)],
            "ours": lambda: [ours_side(classifier, images, labels, eps, alpha, args.pgd_steps, early_stop=False)],
            "ours_early": lambda: [ours_side(classifier, images, labels, eps, alpha, args.pgd_steps, early_stop=True)],
        },
        args.rounds,
    )
    time_of = {k: median([s for s, _ in v]) for k, v in pgd.items()}
    success_of = {k: median([r for _, r in v]) for k, v in pgd.items()}

    rows = [
        ("ideal setup",
         f"timm test_resnet @{IDEAL_SIZE} px, {JOBS} jobs x {IMAGES_PER_JOB} images x {args.steps} steps, Adam, {args.rounds} rounds"),
        ("module image-steps/s (median)", f"{module_rate:.1f}  all: {', '.join(f'{r:.1f}' for r in rates['module'])}"),
        ("plain image-steps/s (median)", f"{plain_rate:.1f}  all: {', '.join(f'{r:.1f}' for r in rates['plain'])}"),
        ("PGD setup", f"stripes classifier (test_resnet @32 px), {len(labels)} correctly classified images, "
                      f"L∞ 8/255, step 2/255, {args.pgd_steps} steps, random start"),
        *((f"PGD {k}", f"{time_of[k]:.3f} s, success {success_of[k]:.3f}") for k in pgd),
    ]
    ratios = [
        ("module / plain image-steps per second", module_rate / plain_rate, "target >= 0.95"),
        ("ours / torchattacks PGD time (no early stop)", time_of["ours"] / time_of["torchattacks"], "target <= 1.05"),
        ("ours / torchattacks PGD time (early stop)", time_of["ours_early"] / time_of["torchattacks"], "target < 1"),
        ("ours / torchattacks PGD success rate", success_of["ours"] / max(success_of["torchattacks"], 1e-9), "target ~ 1.00"),
        ("ours (early stop) / torchattacks PGD success rate", success_of["ours_early"] / max(success_of["torchattacks"], 1e-9),
         "target ~ 1.00"),
    ]
    report("Image optimisation: module vs plain loop; PGD vs torchattacks", rows, ratios)


if __name__ == "__main__":
    main()
