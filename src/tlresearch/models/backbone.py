"""The backbone contract: one kind of object for every network, whatever library built it.

A backbone *family* (torchvision's models, timm's, one of your own) is a module of this
package with a factory ``create_backbone(name, weights, input_size, **model_kwargs) ->
Backbone``, named by the ``_target_`` of its ``conf/backbone/<family>.yaml``: Hydra calls it,
so nothing here lists the families (see CONTRIBUTING.md, "Add a backbone family"). The
bundled ones are :mod:`tlresearch.models.torchvision_backbones` and
:mod:`tlresearch.models.timm_backbones`. Whatever the family, the result is a
:class:`Backbone` module with

* ``forward(x) -> [N, num_features]`` pooled pre-logit features (``forward_features`` too),
* ``num_features``,
* ``blocks``: an ordered list of parameter blocks, stem -> last stage (for gradual
  unfreezing and layer-wise LR decay),
* ``preprocessing``: the resize / crop / mean / std / interpolation its weights expect,
* ``pretrained_head`` and ``pretrained_classes``: the original (ImageNet) classifier and its
  class names, kept aside so image optimisation can study the network as published.

Nothing else in the code base asks which family a backbone came from. This module also holds
what families share: reading ``weights``, the ``input_size`` override, and turning a failed
weights download into a message that says what to do.
"""

from __future__ import annotations

import pickle
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlresearch.core.errors import ConfigError
from tlresearch.data.transforms import Preprocessing


@dataclass(frozen=True)
class Block:
    """A named slice of a backbone: the parameters and modules under ``prefixes``."""

    name: str
    prefixes: tuple[str, ...]

    def owns(self, qualified_name: str) -> bool:
        return any(qualified_name == p or qualified_name.startswith(p + ".") for p in self.prefixes)


class Backbone(nn.Module):
    """A feature extractor with the metadata transfer learning needs (see module docstring).

    Args:
        model: the network; ``model(x)`` must return pooled features ``[N, num_features]``.
        name: the architecture's name in its family.
        source: the family's name (``torchvision``, ``timm``, ...), recorded in provenance.
        weights: the pretrained weights' name, or ``None`` for random initialisation.
        num_features: the width of ``model(x)``.
        preprocessing: the input recipe of the weights (or of the architecture, untrained).
        blocks: parameter blocks, stem -> last stage; a parameter no block claims joins the
            first block, and blocks that own no parameter are dropped.
        pretrained_head: the original classifier on top of the features, if any.
        pretrained_classes: its class names.
    """

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

    def adopt_new_parameters(self, before: set[str]) -> None:
        """After a freeze schedule changed the network (LoRA wraps a layer: ``qkv.weight`` becomes
        ``qkv.base_layer.weight`` next to new ``qkv.lora_A...``; VPT adds ``blocks.0.vpt_prompt``),
        each parameter name not in ``before`` joins the block owning its nearest module's old parameters."""
        extra: dict[str, list[str]] = {b.name: [] for b in self.blocks}
        for n, _ in self.model.named_parameters():
            if n not in before:
                extra[_nearest_owner(n, self.blocks, before)].append(n)
        self.blocks = [Block(b.name, b.prefixes + tuple(extra[b.name])) for b in self.blocks]

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


def _nearest_owner(name: str, blocks: list[Block], before: set[str]) -> str:
    """The block owning a parameter of ``before`` under the longest module path shared with ``name``
    (the first block, the stem, when none does)."""
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:k]) + "."
        for b in blocks:
            if any(o.startswith(prefix) and b.owns(o) for o in before):
                return b.name
    return blocks[0].name


# ----------------------------------------------------------------------------- shared by families


def wants_pretrained(weights: str | None) -> bool:
    """Whether ``backbone.weights`` asks for pretrained weights (``null``/``none``/``false``: random init)."""
    return weights is not None and str(weights).lower() not in {"none", "null", "false"}


def apply_input_size(backbone: Backbone, input_size: int | None) -> Backbone:
    """``backbone`` with its crop size set to ``input_size`` pixels (the weights' resize/crop
    ratio kept); ``None`` keeps the weights' own preprocessing. Every family's factory ends here."""
    if input_size is not None:
        if input_size < 16:
            raise ConfigError(f"backbone.input_size={input_size} is too small; use at least 16 pixels or null.")
        backbone.preprocessing = backbone.preprocessing.with_crop_size(int(input_size))
    return backbone


def call_with_download_errors(build: Callable[[], nn.Module], source: str | None) -> nn.Module:
    """``build()``; a failed weights download or a corrupt cached file becomes a ConfigError
    that says what to do. ``source``: where the weights come from (``None``: no download)."""
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
