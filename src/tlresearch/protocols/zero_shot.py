"""The zero-shot CLIP protocol as a training run: nothing trains, the test split is classified once.

Runs for schedules whose :meth:`~tlresearch.finetune.base.FreezeSchedule.protocol` returns
:class:`~tlresearch.finetune.zero_shot.ZeroShotSettings` (``finetune=zero_shot``):

1. the rest of the backbone's CLIP model (image projection, text tower, logit scale) from open_clip
   (``models/clip_towers.py``; a backbone that is no known CLIP image tower is a ConfigError here,
   before any image is read);
2. the class embeddings (:func:`class_embeddings`): every class name in every template, embedded,
   L2-normalised, averaged over the templates, normalised again;
3. the test split's backbone features (the feature cache: the same entry a ``finetune=logistic``
   run of the backbone reads), projected and L2-normalised (:func:`image_embeddings`);
4. ``logits = logit_scale * image embedding @ class embeddings.T``, scored as the other protocols do.

The run directory gets ``metrics.json`` (``test/*``, ``params/*`` with nothing trainable,
``time/*``, ``zero_shot/*``), ``predictions.csv``, the confusion matrix and ``zero_shot.json``
(the prompts' source, templates and class words). No checkpoint: the classifier is the
pretrained CLIP model and the prompts, which the config names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tlresearch.core.errors import ConfigError
from tlresearch.core.files import write_json_atomic
from tlresearch.finetune.zero_shot import ZeroShotSettings, dataset_templates, prompt_class_names
from tlresearch.models.classifier import TransferClassifier
from tlresearch.models.clip_towers import ClipText, load_clip_text, named_templates
from tlresearch.protocols.cached_data import cached_datamodule
from tlresearch.protocols.context import RunContext
from tlresearch.protocols.logistic import prediction_record
from tlresearch.protocols.logistic_solver import LinearSolution, score

log = logging.getLogger(__name__)


def run_zero_shot(
    settings: ZeroShotSettings, context: RunContext, model: TransferClassifier, datamodule: Any, fit: Callable[[Any], dict[str, Any]]
) -> tuple[dict[str, Any], Any]:
    """Classify the test split with the CLIP text tower's class embeddings instead of ``fit``
    (which is not called); returns ``(metrics, feature DataModule)`` (the caller writes the records)."""
    started = time.perf_counter()
    device = context.device
    clip = load_clip_text(model.backbone, device)  # before any image is read: a non-CLIP backbone stops here
    dataset = str(getattr(datamodule, "name", ""))
    names = class_words(settings, dataset, list(datamodule.classes))
    templates, template_source = resolve_templates(settings.templates, dataset)
    with torch.no_grad():
        text = class_embeddings(clip.encode, clip.tokenize, names, templates, batch_size=settings.text_batch_size, device=device)
    text_s = time.perf_counter() - started
    log.info("zero-shot: %d classes x %d templates (%s) embedded by %s in %.1f s", len(names), len(templates), template_source,
             clip.source, text_s)

    features = cached_datamodule(
        context, model, datamodule, views=0, decode_on_device=settings.decode_on_device, persist=settings.cache_features, device=device
    )
    test = features.features("test").to(device)
    x = image_embeddings(test.features[0].float(), clip.projection.to(device))
    y = test.labels
    head = LinearSolution(weight=clip.logit_scale * text, bias=torch.zeros(len(names), device=device), l2=0.0)
    num_classes = model.hparams.num_classes
    metrics: dict[str, Any] = {"status": "completed", **parameter_counts(model, clip), **score(head, x, y, num_classes, "test")}
    model.test_predictions = prediction_record(head, x, y)
    write_json_atomic(context.output_dir / "zero_shot.json", {
        "text_tower": clip.source, "logit_scale": clip.logit_scale, "templates_source": template_source,
        "templates": list(templates), "class_names": names,
    })
    metrics.update({
        "time/fit_s": time.perf_counter() - started,
        "time/text_s": text_s,
        "zero_shot/templates": len(templates),
        "zero_shot/logit_scale": clip.logit_scale,
        "protocol": f"zero_shot: {clip.source} text tower, {len(templates)} templates ({template_source}), no training",
    })
    return metrics, features


def parameter_counts(model: TransferClassifier, clip: ClipText) -> dict[str, Any]:
    """The classifier's ``params/*`` with the whole CLIP model as the total (image tower, projection,
    text tower; the unused linear head left out): nothing trains."""
    counts = model.parameter_counts()
    total = sum(p.numel() for p in model.backbone.model.parameters()) + clip.num_parameters
    return {**counts, "params/total": total, "params/trainable": 0, "params/trainable_share": 0.0}


def class_words(settings: ZeroShotSettings, dataset: str, classes: list[str]) -> list[str]:
    """The words each class is called in the prompts: ``finetune.class_names`` or the dataset's names."""
    if settings.class_names is None:
        return prompt_class_names(dataset, classes)
    if len(settings.class_names) != len(classes):
        raise ConfigError(
            f"finetune.class_names has {len(settings.class_names)} names, but the dataset has {len(classes)} classes "
            f"({classes[:3]}...); give one name per class in the dataset's order, or null for the dataset's own names."
        )
    return list(settings.class_names)


def resolve_templates(templates: str | tuple[str, ...], dataset: str) -> tuple[tuple[str, ...], str]:
    """``(templates, where they come from)`` for ``finetune.templates`` (``finetune/zero_shot.py``)."""
    if not isinstance(templates, str):
        return tuple(templates), "given"
    if templates == "dataset":
        own = dataset_templates(dataset)
        if own is not None:
            return own, f"CLIP's {dataset}"
        templates = "openai"
    return named_templates(templates), f"CLIP's ImageNet ({templates})"


def class_embeddings(
    encode: Callable[[torch.Tensor], torch.Tensor],
    tokenize: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[C, D]``: for each class, every template filled with its name, embedded, L2-normalised,
    averaged over the templates and normalised again (CLIP's prompt ensembling)."""
    prompts = [t.format(name) for name in class_names for t in templates]  # class-major: reshaped to [C, T, D] below
    tokens = tokenize(prompts)
    embedded = torch.cat([encode(tokens[i : i + batch_size].to(device)).float() for i in range(0, len(prompts), batch_size)])
    per_template = F.normalize(embedded, dim=-1).reshape(len(class_names), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def image_embeddings(features: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``[N, D]``: backbone features ``[N, F]`` through CLIP's image projection ``[F, D]``, L2-normalised."""
    return F.normalize(features @ projection.to(features.dtype), dim=-1)
