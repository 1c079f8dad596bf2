"""Backbones: one contract for every network, torchvision or timm.

:func:`create_backbone` is the single factory. Whatever library an architecture comes
from, the result is a :class:`Backbone` module with

* ``forward(x) -> [N, num_features]`` pooled pre-logit features (``forward_features`` too),
* ``num_features``,
* ``blocks``: an ordered list of parameter blocks, stem -> last stage (for gradual
  unfreezing and layer-wise LR decay),
* ``preprocessing``: the resize / crop / mean / std / interpolation its weights expect,
* ``pretrained_head`` and ``pretrained_classes``: the original (ImageNet) classifier and its
  class names, kept aside so image optimisation can study the network as published.

Nothing else in the code base asks which library a backbone came from.
"""

from __future__ import annotations

import logging
import pickle
import re
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlresearch.data.transforms import Preprocessing
from tlresearch.core.errors import ConfigError, suggest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """A named slice of a backbone: the parameters and modules under ``prefixes``."""

    name: str
    prefixes: tuple[str, ...]

    def owns(self, qualified_name: str) -> bool:
        return any(qualified_name == p or qualified_name.startswith(p + ".") for p in self.prefixes)


class Backbone(nn.Module):
    """A feature extractor with the metadata transfer learning needs (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        source: str,
        weights: str | None,
        num_features: int,
        preprocessing: Preprocessing,
        blocks: list[Block],
        pretrained_head: nn.Module | None = None,
        pretrained_classes: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.source = source
        self.weights = weights
        self.num_features = num_features
        self.preprocessing = preprocessing
        self.blocks = _complete_blocks(model, blocks)
        # Kept outside `self.model` so transfer training never sees (or counts) it, but in the
        # module tree, so it moves devices with the backbone.
        self.pretrained_head = pretrained_head
        self.pretrained_classes = pretrained_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features, ``[N, num_features]``."""
        return self.model(x)

    forward_features = forward

    def forward_pretrained(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the original pretrained classifier (ImageNet for the bundled weights)."""
        if self.pretrained_head is None:
            raise ConfigError(f"backbone {self.name!r} has no pretrained classification head to evaluate.")
        return self.pretrained_head(self.model(x))

    def block_parameters(self, block: Block) -> list[nn.Parameter]:
        """The parameters that belong to ``block``."""
        return [p for n, p in self.model.named_parameters() if block.owns(n)]

    def block_modules(self, block: Block) -> Iterator[nn.Module]:
        """The modules that belong to ``block``."""
        return (m for n, m in self.model.named_modules() if n and block.owns(n))

    def describe(self) -> dict:
        """What identifies this backbone, for provenance and feature-cache keys."""
        return {"name": self.name, "source": self.source, "weights": self.weights, "num_features": self.num_features}


def _complete_blocks(model: nn.Module, blocks: list[Block]) -> list[Block]:
    """Make every parameter belong to exactly one block: strays (e.g. a ViT's class token)
    join the first block, the stem, which is where they act."""
    names = [n for n, _ in model.named_parameters()]
    for n in names:
        owners = [b.name for b in blocks if b.owns(n)]
        if len(owners) > 1:
            raise AssertionError(f"parameter {n} is claimed by blocks {owners}")
    strays = tuple(n for n in names if not any(b.owns(n) for b in blocks))
    if strays:
        blocks = [Block(blocks[0].name, blocks[0].prefixes + strays), *blocks[1:]] if blocks else [Block("stem", strays)]
    return [b for b in blocks if any(b.owns(n) for n in names)]


# ----------------------------------------------------------------------------- factory


def create_backbone(
    name: str,
    source: str = "torchvision",
    weights: str | None = "DEFAULT",
    input_size: int | None = None,
    checkpoint_file: str | None = None,
    **model_kwargs,
) -> Backbone:
    """Build a :class:`Backbone`.

    Args:
        name: architecture name in ``source`` (``resnet50``, ``vit_b_16``, any timm model...).
        source: ``torchvision`` or ``timm``.
        weights: torchvision: a member of the model's Weights enum (``DEFAULT``,
            ``IMAGENET1K_V1``, ...); timm: ``DEFAULT`` (its default pretrained tag) or a
            pretrained tag; ``None`` for random initialisation.
        input_size: crop size override in pixels (keeps the weights' resize/crop ratio).
        checkpoint_file: timm only: load pretrained weights from this local file.
        **model_kwargs: passed to the library's model constructor (e.g. ``drop_path_rate``).
    """
    try:
        builder = _BUILDERS[source]
    except KeyError:
        raise ConfigError(
            f"backbone.source={source!r} is not supported; use one of {sorted(_BUILDERS)}.{suggest(source, _BUILDERS)}"
        ) from None
    backbone = builder(name, weights, checkpoint_file=checkpoint_file, **model_kwargs)
    if input_size is not None:
        if input_size < 16:
            raise ConfigError(f"backbone.input_size={input_size} is too small; use at least 16 pixels or null.")
        backbone.preprocessing = backbone.preprocessing.with_crop_size(int(input_size))
    return backbone


# ----------------------------------------------------------------------------- torchvision


def torchvision_model_names() -> list[str]:
    """Every torchvision classification model name."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build_torchvision(name: str, weights: str | None, checkpoint_file: str | None = None, **kwargs) -> Backbone:
    import torchvision

    if checkpoint_file is not None:
        raise ConfigError(
            "backbone.checkpoint_file is for timm models; torchvision weights load from torch's hub cache "
            "(put the file in $TORCH_HOME/hub/checkpoints/)."
        )
    names = torchvision_model_names()
    if name not in names:
        raise ConfigError(
            f"backbone.name={name!r} is not a torchvision classification model.{suggest(name, names)} "
            "For timm models use backbone=timm backbone.name=<timm name>."
        )
    enum = torchvision.models.get_model_weights(name)
    chosen = _torchvision_weights(enum, name, weights)
    reference = chosen or enum.DEFAULT  # preprocessing & class names even for random init
    model = _call_with_download_errors(
        lambda: torchvision.models.get_model(name, weights=chosen, **kwargs), chosen.url if chosen else None
    )
    head_parent, head_attr, head = _last_linear(model)
    setattr(head_parent, head_attr, nn.Identity())
    t = reference.transforms()
    preprocessing = Preprocessing(
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    return Backbone(
        model,
        name=name,
        source="torchvision",
        weights=chosen.name if chosen else None,
        num_features=head.in_features,
        preprocessing=preprocessing,
        blocks=_torchvision_blocks(model),
        pretrained_head=head,
        pretrained_classes=list(reference.meta.get("categories") or []) or None,
    )


def _torchvision_weights(enum, name: str, weights: str | None):
    if weights is None or str(weights).lower() in {"none", "null", "false"}:
        return None
    members = list(enum.__members__)  # includes the DEFAULT alias
    key = str(weights).split(".")[-1]
    if key not in members:
        raise ConfigError(
            f"backbone.weights={weights!r} is not a weights option of {name}; choose one of {members} "
            f"or null for random initialisation.{suggest(key, members)}"
        )
    return enum.DEFAULT if key == "DEFAULT" else enum[key]


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The final classification layer: torchvision models all end in one nn.Linear."""
    found = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = qualified
    if found is None:
        raise ConfigError(f"torchvision model {type(model).__name__} has no final nn.Linear classifier to replace.")
    parent_name, _, attr = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def _torchvision_blocks(model: nn.Module) -> list[Block]:
    """Ordered blocks stem -> last stage, by the architecture families' layouts."""
    children = dict(model.named_children())
    if "layer1" in children:  # ResNet, ResNeXt, Wide ResNet
        layers = [n for n in children if re.fullmatch(r"layer\d+", n)]
        stem = tuple(n for n in children if n not in layers)
        return [Block("stem", stem), *(Block(n, (n,)) for n in layers)]
    if "encoder" in children and hasattr(model.encoder, "layers"):  # ViT
        layers = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]
        return [
            Block("stem", ("conv_proj", "encoder.pos_embedding")),
            *(Block(n.rsplit(".", 1)[-1], (n,)) for n in layers),
            Block("norm", ("encoder.ln",)),
        ]
    if "features" in children:  # VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet, Swin, ...
        return [*_feature_stages(model.features), *(Block(n, (n,)) for n in children if n != "features")]
    return [Block(n, (n,)) for n in children]  # RegNet, GoogLeNet, ...: top-level children


def _feature_stages(features: nn.Module) -> list[Block]:
    """Blocks of a `features` Sequential. Plain conv stacks (VGG: one layer per child) are
    grouped into the stages that pooling layers delimit; other families' children already
    are stages (inverted-residual blocks, ConvNeXt stages, DenseNet blocks...)."""
    children = list(features.named_children())
    if not any(isinstance(m, nn.MaxPool2d) for _, m in children):
        return [Block(f"features.{n}", (f"features.{n}",)) for n, _ in children]
    stages, current = [], []
    for n, m in children:
        current.append(f"features.{n}")
        if isinstance(m, nn.MaxPool2d):
            stages.append(Block(f"stage{len(stages) + 1}", tuple(current)))
            current = []
    if current:
        stages.append(Block(f"stage{len(stages) + 1}", tuple(current)))
    return stages


# ----------------------------------------------------------------------------- timm


def _build_timm(name: str, weights: str | None, checkpoint_file: str | None = None, **kwargs) -> Backbone:
    import timm
    from timm.models import group_parameters

    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ConfigError(f"backbone.name={name!r} is not a timm model.{suggest(base, timm.list_models())}")
    pretrained = weights is not None and str(weights).lower() not in {"none", "null", "false"}
    model_name = name
    if pretrained and str(weights) not in {"DEFAULT", "True", "true"}:
        model_name = f"{base}.{weights}"
    overlay = {"file": str(checkpoint_file)} if checkpoint_file else None
    if checkpoint_file and not Path(checkpoint_file).is_file():
        raise ConfigError(f"backbone.checkpoint_file={checkpoint_file!r} does not exist.")
    model = _call_with_download_errors(
        lambda: timm.create_model(model_name, pretrained=pretrained, pretrained_cfg_overlay=overlay, **kwargs),
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
    blocks = _blocks_from_param_groups(model, name_to_group)
    return Backbone(
        model,
        name=name,
        source="timm",
        weights=(str(weights) if pretrained else None),
        # What forward() returns after reset_classifier(0): the head's hidden size where a model
        # has one (MobileNetV3's conv_head, ...), else the pooled trunk's channels.
        num_features=getattr(model, "head_hidden_size", None) or model.num_features,
        preprocessing=preprocessing,
        blocks=blocks,
        pretrained_head=head if isinstance(head, nn.Module) and not isinstance(head, nn.Identity) else None,
        pretrained_classes=classes,
    )


def _blocks_from_param_groups(model: nn.Module, name_to_group: dict[str, int]) -> list[Block]:
    groups: dict[int, list[str]] = {}
    for n, _ in model.named_parameters():
        groups.setdefault(name_to_group.get(n, 0), []).append(n)
    return [Block(f"group{gid}", tuple(groups[gid])) for gid in sorted(groups)]


def _timm_class_names(model: nn.Module) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        return [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
    except Exception:  # noqa: BLE001 - class names are a convenience, never a reason to fail
        return None


# ----------------------------------------------------------------------------- errors


def _call_with_download_errors(build: Callable[[], nn.Module], source: str | None) -> nn.Module:
    """Turn a failed weights download or a corrupt cached file into a ConfigError that says what to do."""
    try:
        return build()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        if source is None or isinstance(exc, FileNotFoundError):
            raise
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ConfigError(
            f"Could not download the pretrained weights from {source}: {exc}. This machine seems to have no "
            f"network access. Download the file on a connected machine and copy it into {cache}/ "
            "(torch's hub cache; set TORCH_HOME to move it), or train from scratch with backbone.weights=null."
        ) from exc
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        if source is None or not (isinstance(exc, pickle.UnpicklingError) or _looks_like_bad_checkpoint(exc)):
            raise
        raise ConfigError(
            f"The cached pretrained weights for {source} could not be read ({exc}). Delete the file from "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} so it is downloaded again."
        ) from exc


def _looks_like_bad_checkpoint(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("zip", "pickle", "unexpected eof", "load_state_dict", "magic number", "corrupt"))


_BUILDERS: dict[str, Callable[..., Backbone]] = {"torchvision": _build_torchvision, "timm": _build_timm}
