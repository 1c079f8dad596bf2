"""The rest of a CLIP model behind a timm CLIP image tower: projection, text tower, logit scale.

``backbone=clip_vitb16`` and ``clip_vitb16_laion`` are timm image towers
(``models/timm_backbones.py``). Their features are CLIP's class token after the final LayerNorm
(open_clip's ``ln_post``), BEFORE the image projection: timm keeps that projection as the model's
classification head, which the backbone drops. Zero-shot classification needs the rest of the
same CLIP model: the image projection, the text tower and the learned logit scale.
:func:`load_clip_text` builds them with open_clip from its checkpoint of the same weights
(:data:`OPEN_CLIP_OF_TIMM`), and checks that the image tower in that checkpoint is the
backbone's: the two libraries download separate files.

open_clip is the optional extra ``clip`` (``pip install 'tlresearch[clip]'``); without it,
:func:`load_clip_text` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tlresearch.core.errors import ConfigError
from tlresearch.models.backbone import Backbone

try:  # the optional extra "clip"
    import open_clip
except ImportError:  # pragma: no cover - depends on the installation
    open_clip = None

#: timm's CLIP image towers with the open_clip model of the same weights:
#: ``(timm architecture, timm pretrained tag) -> (open_clip model, open_clip pretrained tag)``, the
#: first one the installed open_clip lists. OpenAI's weights were trained with QuickGELU: open_clip's
#: ``-quickgelu`` config builds them as trained (timm's ``vit_base_patch16_clip_quickgelu_224``
#: likewise); open_clip versions that list them under ``ViT-B-16`` only switch to QuickGELU themselves.
OPEN_CLIP_OF_TIMM: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("vit_base_patch16_clip_quickgelu_224", "openai"): (("ViT-B-16-quickgelu", "openai"), ("ViT-B-16", "openai")),
    ("vit_base_patch16_clip_224", "laion2b"): (("ViT-B-16", "laion2b_s34b_b88k"),),
}
#: The backbone configs whose towers are in :data:`OPEN_CLIP_OF_TIMM` (for messages).
CLIP_BACKBONES = ("clip_vitb16", "clip_vitb16_laion")
#: Image-tower tensors that must be equal in both checkpoints: (timm name, open_clip name).
_SAME_TENSORS = (("patch_embed.proj.weight", "visual.conv1.weight"), ("norm.weight", "visual.ln_post.weight"),
                 ("norm.bias", "visual.ln_post.bias"))


@dataclass
class ClipText:
    """What zero-shot needs from a CLIP model besides the backbone.

    Attributes:
        encode: token ids ``[N, L]`` -> text embeddings ``[N, D]`` (projected, not normalised).
        tokenize: prompts -> token ids ``[N, L]``.
        projection: the image projection ``[F, D]`` (backbone features ``@ projection``).
        logit_scale: CLIP's learned temperature, ``exp(logit_scale)`` (100 for OpenAI's weights).
        source: ``open_clip:<model>/<pretrained>``, for the records.
        num_parameters: the parameters of the CLIP model beyond the backbone (text tower,
            projection, logit scale).
    """

    encode: Callable[[torch.Tensor], torch.Tensor]
    tokenize: Callable[[list[str]], torch.Tensor]
    projection: torch.Tensor
    logit_scale: float
    source: str
    num_parameters: int = 0


def open_clip_name(backbone: Backbone, key: str = "finetune") -> tuple[str, str]:
    """The open_clip ``(model, pretrained)`` of the backbone's weights; a ConfigError for a
    backbone that is no CLIP image tower we know, or one without its pretrained weights."""
    cfg = getattr(backbone.model, "pretrained_cfg", None) or {}
    pair = (cfg.get("architecture"), cfg.get("tag"))
    fix = f"use backbone={' or backbone='.join(CLIP_BACKBONES)} (or another finetune for this backbone, e.g. finetune=logistic)."
    if backbone.source != "timm" or pair not in OPEN_CLIP_OF_TIMM:
        known = ", ".join(f"{a}.{t}" for a, t in OPEN_CLIP_OF_TIMM)
        raise ConfigError(
            f"backbone.name={backbone.name!r} is invalid with {key}=zero_shot: zero-shot classification needs a CLIP image "
            f"tower whose text tower open_clip provides (timm models {known}); {fix}"
        )
    if backbone.weights is None:
        raise ConfigError(f"backbone.weights=null is invalid with {key}=zero_shot: the CLIP text tower matches the pretrained "
                          "image tower only; use backbone.weights=DEFAULT.")
    require_open_clip()
    candidates = OPEN_CLIP_OF_TIMM[pair]
    listed = set(open_clip.list_pretrained())
    return next((c for c in candidates if c in listed), candidates[0])


def require_open_clip() -> None:
    """A ConfigError naming the extra when open_clip is not installed."""
    if open_clip is None:
        raise ConfigError("finetune=zero_shot needs open_clip, which is not installed; install the extra: "
                          "pip install 'tlresearch[clip]' (open_clip_torch>=2.24).")


def load_clip_text(backbone: Backbone, device: torch.device | str = "cpu") -> ClipText:
    """The projection, text tower and logit scale of the backbone's CLIP model, from open_clip's
    checkpoint (downloaded into the Hugging Face cache, ``HF_HOME``, on first use)."""
    name, pretrained = open_clip_name(backbone)
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except RuntimeError as exc:
        if "download" not in str(exc).lower():
            raise
        raise ConfigError(
            f"finetune=zero_shot could not get open_clip's {name}/{pretrained} weights (its text tower): {exc} On a machine "
            "without network access, copy the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) of a machine that ran "
            "it once, or use finetune=logistic, which needs the image tower only."
        ) from exc
    check_same_image_tower(backbone.model, model, f"open_clip {name}/{pretrained}")
    model.eval()
    projection = model.visual.proj.detach().clone()
    scale = float(model.logit_scale.detach().exp())
    del model.visual  # the backbone is the image tower
    tokenizer = open_clip.get_tokenizer(name)
    size = sum(p.numel() for p in model.parameters()) + projection.numel()
    return ClipText(model.encode_text, lambda prompts: tokenizer(prompts), projection, scale, f"open_clip:{name}/{pretrained}", size)


def check_same_image_tower(timm_model: nn.Module, clip_model: nn.Module, source: str) -> None:
    """The backbone's weights must be the image tower of ``clip_model`` (a mismatch would pair
    one model's images with another's text); compared on a few identifying tensors."""
    timm_state, clip_state = timm_model.state_dict(), clip_model.state_dict()
    for timm_key, clip_key in _SAME_TENSORS:
        a, b = timm_state[timm_key].float().cpu(), clip_state[clip_key].float().cpu()
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-3):
            raise ConfigError(
                f"the backbone's weights are not the image tower of {source} ({timm_key} differs from {clip_key}): the two "
                "checkpoints in the Hugging Face cache (HF_HOME) hold different models; delete the stale one so that both are "
                "downloaded again, or use the backbone's own weights (backbone.weights=DEFAULT)."
            )


def named_templates(name: str) -> tuple[str, ...]:
    """open_clip's ImageNet templates as format strings: ``openai`` (CLIP's 80) or ``simple`` (its 7 selected)."""
    require_open_clip()
    metadata = open_clip.zero_shot_metadata
    sets = {"openai": metadata.OPENAI_IMAGENET_TEMPLATES, "simple": metadata.SIMPLE_IMAGENET_TEMPLATES}
    return tuple(template("{}") for template in sets[name])
