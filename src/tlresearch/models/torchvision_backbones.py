"""The torchvision backbone family: every ``torchvision.models`` classification model.

``conf/backbone/_torchvision.yaml`` (and each ``conf/backbone/<model>.yaml`` built on it)
names :func:`create_backbone`. The weights and their preprocessing come from the model's
Weights enum; the blocks follow the architecture families' layouts (ResNet stages, ViT
encoder layers, ``features`` stages, ...).
"""

from __future__ import annotations

import re

import torchvision
from torch import nn

from tlresearch.core.config import check_choice, require
from tlresearch.core.errors import ConfigError, suggest
from tlresearch.data.transforms import Preprocessing
from tlresearch.models.backbone import Backbone, Block, apply_input_size, call_with_download_errors, wants_pretrained

#: Where the new head goes: after every pretrained layer but the last Linear, or in place of the
#: model's whole ``classifier`` module (VGG: on the 25,088 flattened conv features).
CUTS = ("last_linear", "classifier")


def create_backbone(
    name: str, weights: str | None = "DEFAULT", input_size: int | None = None, checkpoint_file: str | None = None,
    cut: str = "last_linear", **model_kwargs
) -> Backbone:
    """A torchvision classification model as a :class:`Backbone`.

    Args:
        name: a ``torchvision.models`` name (``resnet50``, ``vit_b_16``, ...).
        weights: a member of the model's Weights enum (``DEFAULT``, ``IMAGENET1K_V1``, ...);
            ``None`` for random initialisation.
        input_size: crop size override in pixels (keeps the weights' resize/crop ratio).
        checkpoint_file: refused: torchvision weights load from torch's hub cache.
        cut: ``last_linear``: only the final ``nn.Linear`` is replaced (VGG keeps its pretrained
            fc6/fc7: 4,096 features); ``classifier``: the model's whole ``classifier`` module is,
            as ``vgg.classifier = nn.Linear(25088, 2)`` does in the AI-for-Beginners lesson
            (no ImageNet head is kept then, so ``tlresearch.visualize`` needs the default).
        **model_kwargs: passed to ``torchvision.models.get_model`` (e.g. ``dropout``).
    """
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
    model = call_with_download_errors(
        lambda: torchvision.models.get_model(name, weights=chosen, **model_kwargs), chosen.url if chosen else None
    )
    check_choice("backbone.cut", cut, CUTS)
    if cut == "classifier":
        head = getattr(model, "classifier", None)
        require(isinstance(head, nn.Module), "backbone.cut", cut, f"{name} has no `classifier` module; use cut=last_linear.")
        first = next(m for m in head.modules() if isinstance(m, nn.Linear)) if isinstance(head, nn.Sequential) else head
        num_features, head = first.in_features, None
        model.classifier = nn.Identity()
    else:
        head_parent, head_attr, head = _last_linear(model)
        setattr(head_parent, head_attr, nn.Identity())
        num_features = head.in_features
    t = reference.transforms()
    preprocessing = Preprocessing(
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    backbone = Backbone(
        model,
        name=name,
        source="torchvision",
        weights=chosen.name if chosen else None,
        num_features=num_features,
        preprocessing=preprocessing,
        blocks=_torchvision_blocks(model),
        pretrained_head=head,
        pretrained_classes=list(reference.meta.get("categories") or []) or None,
    )
    return apply_input_size(backbone, input_size)


def torchvision_model_names() -> list[str]:
    """Every torchvision classification model name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_weights(enum, name: str, weights: str | None):
    if not wants_pretrained(weights):
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
