"""The timm backbone family: any ``timm`` model (``backbone=timm backbone.name=<timm name>``).

``conf/backbone/timm.yaml`` names :func:`create_backbone`. The preprocessing comes from the
model's pretrained data config; the blocks are timm's own coarse parameter groups
(``model.group_matcher``), stem -> last stage.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.models import group_parameters
from torch import nn

from tlresearch.core.errors import ConfigError, suggest
from tlresearch.data.transforms import Preprocessing
from tlresearch.models.backbone import Backbone, Block, apply_input_size, call_with_download_errors, wants_pretrained


def create_backbone(
    name: str, weights: str | None = "DEFAULT", input_size: int | None = None, checkpoint_file: str | None = None, **model_kwargs
) -> Backbone:
    """A timm model as a :class:`Backbone`.

    Args:
        name: a timm model name, optionally with a pretrained tag (``vit_small_patch16_224.augreg_in21k``).
        weights: ``DEFAULT`` (timm's default pretrained tag) or a pretrained tag; ``None`` for
            random initialisation.
        input_size: crop size override in pixels (keeps the data config's resize/crop ratio);
            fixed-size models (ViTs) are built at this size.
        checkpoint_file: load the pretrained weights from this local file instead of the hub.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ConfigError(f"backbone.name={name!r} is not a timm model.{suggest(base, timm.list_models())}")
    pretrained = wants_pretrained(weights)
    model_name = name
    if pretrained and str(weights) not in {"DEFAULT", "True", "true"}:
        model_name = f"{base}.{weights}"
    overlay = {"file": str(checkpoint_file)} if checkpoint_file else None
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    if input_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        # ViTs (DINOv2's default is 518 px) are built at the configured size: timm resamples the
        # position embeddings of the pretrained weights to it.
        model_kwargs.setdefault("img_size", int(input_size))
    if checkpoint_file and not Path(checkpoint_file).is_file():
        raise ConfigError(f"backbone.checkpoint_file={checkpoint_file!r} does not exist.")
    model = call_with_download_errors(
        lambda: timm.create_model(model_name, pretrained=pretrained, pretrained_cfg_overlay=overlay, **model_kwargs),
        f"the Hugging Face hub ({model_name})" if pretrained else None,
    )
    head = model.get_classifier()
    classes = _timm_class_names(model) if isinstance(head, nn.Linear) else None
    model.reset_classifier(0)
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    preprocessing = Preprocessing(
        crop_size=crop,
        resize_size=int(crop / cfg.get("crop_pct", 0.875)),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear"),
    )
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    name_to_group = {n: gid for gid, ns in grouped.items() for n in ns}
    backbone = Backbone(
        model,
        name=name,
        source="timm",
        weights=(str(weights) if pretrained else None),
        # What forward() returns after reset_classifier(0): the head's hidden size where a model
        # has one (MobileNetV3's conv_head, ...), else the pooled trunk's channels.
        num_features=getattr(model, "head_hidden_size", None) or model.num_features,
        preprocessing=preprocessing,
        blocks=_blocks_from_param_groups(model, name_to_group),
        pretrained_head=head if isinstance(head, nn.Module) and not isinstance(head, nn.Identity) else None,
        pretrained_classes=classes,
    )
    return apply_input_size(backbone, input_size)


def _blocks_from_param_groups(model: nn.Module, name_to_group: dict[str, int]) -> list[Block]:
    groups: dict[int, list[str]] = {}
    for n, _ in model.named_parameters():
        groups.setdefault(name_to_group.get(n, 0), []).append(n)
    return [Block(f"group{gid}", tuple(groups[gid])) for gid in sorted(groups)]


def _timm_class_names(model: nn.Module) -> list[str] | None:
    try:  # imported here: older timm versions lack these, and then there are simply no names
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        return [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
    except Exception:  # noqa: BLE001 - class names are a convenience, never a reason to fail
        return None
