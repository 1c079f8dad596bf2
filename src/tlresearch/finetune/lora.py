"""LoRA (Hu et al. 2022): low-rank adapters next to frozen weights, through the ``peft`` library.

Defaults per backbone family (``target_modules: null``), found by inspecting the network:
ViTs get adapters on their attention projections (timm's ``attn.qkv`` and ``attn.proj``;
torchvision's ``nn.MultiheadAttention``, i.e. its in-projection and ``out_proj``); a network
without attention gets them on its 1x1 convolutions and linear layers (a CNN). After training,
:func:`merge_adapters` folds the adapters into the weights for inference (same outputs).
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from tlresearch.core.config import check_int, require
from tlresearch.core.errors import ConfigError
from tlresearch.finetune.base import check_positive
from tlresearch.finetune.peft_base import PeftSchedule


class LoRA(PeftSchedule):
    """Only the adapters' A and B matrices train (plus the head).

    Args:
        rank: the adapters' rank r (>= 1).
        alpha: scaling numerator: the update is (alpha / r) B A.
        dropout: dropout on the adapters' input, in [0, 1).
        target_modules: module names (or suffixes) or one regular expression for ``peft``; ``None``:
            the family default (see the module docstring).
        combine, combine_args: see :class:`PeftSchedule`.
    """

    name = "lora"

    def __init__(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0, target_modules: list[str] | str | None = None,
                 combine: str | None = None, combine_args: dict | None = None) -> None:
        super().__init__(combine, combine_args)
        check_int("finetune.rank", rank, minimum=1, fix="use a rank >= 1, e.g. 8.")
        check_positive("alpha", alpha)
        require(0 <= dropout < 1, "finetune.dropout", dropout, "use a probability in [0, 1).")
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules if target_modules is None or isinstance(target_modules, str) else list(target_modules)

    def _adapt(self, model: nn.Module) -> None:
        targets = self.target_modules if self.target_modules is not None else default_targets(model)
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)
        try:
            inject_adapter_in_model(config, model)
        except ValueError as exc:
            raise ConfigError(
                f"finetune.target_modules={targets!r} matches no module LoRA can adapt in this backbone ({exc}). "
                "Name Linear / Conv2d / MultiheadAttention modules (print the model), or use null for the family default."
            ) from exc

    def selects(self, name, param, model) -> bool:
        return "lora_" in name

    def method_label(self) -> str:
        return f"LoRA r={self.rank}"


def default_targets(model: nn.Module) -> list[str]:
    """The family default: attention projections of a ViT, else 1x1 convolutions and linear layers."""
    names = dict(model.named_modules())
    attention = [n for n, m in names.items() if isinstance(m, nn.MultiheadAttention)]
    attention += [n for n, m in names.items() if isinstance(m, nn.Linear) and n.endswith((".attn.qkv", ".attn.proj"))]
    if attention:
        return attention
    convs = [n for n, m in names.items() if isinstance(m, nn.Linear)
             or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)]
    if not convs:
        raise ConfigError("finetune=lora found no attention projection, 1x1 convolution or linear layer in this "
                          "backbone; name the modules to adapt with finetune.target_modules=[...].")
    return convs


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base weight (in place) for inference; outputs stay the same
    up to float rounding. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            module.merge()
    return model
