"""How well it worked: per-image records (computed where the job ran) and the run's summary.

Everything is measured on the images *after rounding to 8-bit pixels*, i.e. on what the PNG
files hold: an adversarial example that only works between two 8-bit values does not count.

Ideal images: target probability on the clean render and averaged over fresh random
transforms, top-1 hit rate on the network and on a second one.
Attacks: success rate over images the network classified correctly to begin with (and,
targeted, whose label is not the target), L∞ / L2 of the perturbation and SSIM over those
images, steps to success over the successful ones, transfer rate to a second network.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from tlresearch.imageopt.attacks import AttackResult
from tlresearch.imageopt.ideal import IdealResult
from tlresearch.imageopt.images import quantize_8bit
from tlresearch.imageopt.network import FrozenClassifier
from tlresearch.imageopt.objectives import success_margin
from tlresearch.imageopt.regularizers import total_variation
from tlresearch.imageopt.transforms import RobustnessTransforms


def _name(network: FrozenClassifier, index: int) -> str | None:
    return network.class_names[index] if index >= 0 else None


@torch.no_grad()
def target_prob_under_transforms(
    network: FrozenClassifier, images: torch.Tensor, targets: torch.Tensor, transforms: RobustnessTransforms,
    draws: int, generator: torch.Generator,
) -> torch.Tensor:
    """Target probability averaged over ``draws`` fresh random transforms (NaN when 0 draws)."""
    if draws == 0:
        return torch.full((len(images),), float("nan"), device=images.device)
    family = dataclasses.replace(transforms, enabled=True)
    probs = [network(family(images, generator)).float().softmax(1).gather(1, targets[:, None]).squeeze(1) for _ in range(draws)]
    return torch.stack(probs).mean(0)


@torch.no_grad()
def ideal_records(
    network: FrozenClassifier,
    check: FrozenClassifier | None,
    result: IdealResult,
    targets: torch.Tensor,
    seeds: torch.Tensor,
    job_id: int,
    transforms: RobustnessTransforms,
    eval_transforms: int,
    generator: torch.Generator,
) -> list[dict[str, Any]]:
    """One record per ideal image of a job."""
    images = quantize_8bit(result.images)
    logits = network(images).float()
    probs = logits.softmax(1)
    pred = probs.argmax(1)
    margin = success_margin(logits, targets, targets)
    robust = target_prob_under_transforms(network, images, targets, transforms, eval_transforms, generator)
    tv = total_variation(images, "mean")
    check_pred = check(images).argmax(1) if check is not None else None
    records = []
    for i, target in enumerate(targets.tolist()):
        record = {
            "job_id": job_id,
            "target": target,
            "target_name": _name(network, target),
            "seed": int(seeds[i]),
            "target_prob": float(probs[i, target]),
            "target_prob_transformed": float(robust[i]),
            "target_margin": float(margin[i]),
            "target_logit_start": float(result.target_logit[i, 0]),
            "target_logit_end": float(logits[i, target]),
            "pred": int(pred[i]),
            "pred_name": _name(network, int(pred[i])),
            "pred_prob": float(probs[i, pred[i]]),
            "hit": bool(pred[i] == target),
            "tv_mean": float(tv[i]),
        }
        if check_pred is not None:
            record.update(check_pred=int(check_pred[i]), check_hit=bool(check_pred[i] == target))
        records.append(record)
    return records


@torch.no_grad()
def attack_records(
    network: FrozenClassifier,
    check: FrozenClassifier | None,
    sources: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    result: AttackResult,
    source_index: torch.Tensor,
    job_id: int,
) -> list[dict[str, Any]]:
    """One record per (source image, target) of a job; ``labels`` already resolved."""
    adversarial = quantize_8bit(result.images)
    clean_probs = network(sources).float().softmax(1)
    adv_logits = network(adversarial).float()
    adv_probs = adv_logits.softmax(1)
    success = success_margin(adv_logits, labels, targets) > 0
    delta = adversarial - sources
    linf = delta.flatten(1).abs().amax(1)
    l2 = delta.flatten(1).norm(dim=1)
    ssim = structural_similarity_index_measure(adversarial, sources, data_range=1.0, reduction="none")
    transfer = None
    if check is not None:
        check_clean = check(sources).argmax(1)
        transfer = success_margin(check(adversarial).float(), labels, targets) > 0
    records = []
    for i in range(len(sources)):
        label, target = int(labels[i]), int(targets[i])
        clean_pred, adv_pred = int(clean_probs[i].argmax()), int(adv_probs[i].argmax())
        correct = clean_pred == label
        record = {
            "job_id": job_id,
            "source_index": int(source_index[i]),
            "label": label,
            "label_name": _name(network, label),
            "target": target,
            "target_name": _name(network, target),
            "clean_pred": clean_pred,
            "clean_pred_name": _name(network, clean_pred),
            "clean_prob": float(clean_probs[i, clean_pred]),
            "adv_pred": adv_pred,
            "adv_pred_name": _name(network, adv_pred),
            "adv_prob": float(adv_probs[i, adv_pred]),
            "initially_correct": correct,
            "eligible": correct and label != target,
            "success": bool(success[i]),
            "success_float": bool(result.success[i]),
            "steps_to_success": int(result.steps_to_success[i]),
            "linf": float(linf[i]),
            "l2": float(l2[i]),
            "ssim": float(ssim[i]),
        }
        if transfer is not None:
            record.update(check_clean_correct=bool(check_clean[i] == label), transfer_success=bool(transfer[i]))
        records.append(record)
    return records


# ----------------------------------------------------------------------------- summaries


def _mean(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize_ideal(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flat ``ideal/*`` metrics of all ideal images."""
    robust = [r["target_prob_transformed"] for r in records if r["target_prob_transformed"] == r["target_prob_transformed"]]
    out: dict[str, Any] = {
        "ideal/images": len(records),
        "ideal/target_prob": _mean([r["target_prob"] for r in records]),
        "ideal/target_prob_transformed": _mean(robust),
        "ideal/top1_hit_rate": _rate([r["hit"] for r in records]),
        "ideal/target_logit_start": _mean([r["target_logit_start"] for r in records]),
        "ideal/target_logit_end": _mean([r["target_logit_end"] for r in records]),
        "ideal/tv_mean": _mean([r["tv_mean"] for r in records]),
    }
    if records and "check_hit" in records[0]:
        out["ideal/check_top1_hit_rate"] = _rate([r["check_hit"] for r in records])
    return out


def summarize_attack(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flat ``attack/*`` metrics of all (source image, target) pairs."""
    eligible = [r for r in records if r["eligible"]]
    won = [r for r in eligible if r["success"]]
    out: dict[str, Any] = {
        "attack/pairs": len(records),
        "attack/eligible": len(eligible),
        "attack/clean_accuracy": _rate([r["initially_correct"] for r in records]),
        "attack/adv_accuracy": _rate([r["adv_pred"] == r["label"] for r in records]),
        "attack/success_rate": _rate([r["success"] for r in eligible]),
        "attack/success_rate_float": _rate([r["success_float"] for r in eligible]),
        "attack/linf_mean": _mean([r["linf"] for r in eligible]),
        "attack/linf_median": _median([r["linf"] for r in eligible]),
        "attack/l2_mean": _mean([r["l2"] for r in eligible]),
        "attack/l2_median": _median([r["l2"] for r in eligible]),
        "attack/ssim_mean": _mean([r["ssim"] for r in eligible]),
        "attack/steps_to_success_mean": _mean([r["steps_to_success"] for r in won if r["steps_to_success"] >= 0]),
        "attack/steps_to_success_median": _median([r["steps_to_success"] for r in won if r["steps_to_success"] >= 0]),
    }
    if records and "transfer_success" in records[0]:
        out["attack/transfer_success_rate"] = _rate([r["transfer_success"] for r in won if r["check_clean_correct"]])
    return out


def run_metrics(
    task: str,
    network: FrozenClassifier,
    check: FrozenClassifier | None,
    records: list[dict[str, Any]],
    results: list[dict[str, Any]],
    elapsed: float,
    world_size: int,
) -> dict[str, Any]:
    """The flat ``metrics.json`` of a run of ``task`` (``ideal`` or ``adversarial``): what ran,
    how long it took, and the task's summary."""
    summary = summarize_ideal(records) if task == "ideal" else summarize_attack(records)
    image_steps = sum(int(r["image_steps"]) for r in results)
    return {
        "status": "completed",
        "task": task,
        "network": network.name,
        "check_network": check.name if check is not None else None,
        "jobs": len(results),
        "world_size": world_size,
        "time/optimize_s": elapsed,
        "throughput/image_steps_s": image_steps / elapsed if elapsed > 0 else None,
        **summary,
    }
