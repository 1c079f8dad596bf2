"""Visual prompt tuning (Jia et al. 2022): learnable prompt tokens in a frozen ViT.

Shallow (``deep: false``): ``num_tokens`` prompts join the token sequence before the first
transformer block, after the class (and register) tokens. Deep: every block gets its own
prompts, replacing the previous block's outputs at those positions. The prompts leave the
sequence after the last block, so pooling (class token or average) sees the usual tokens.
Parameters added: ``num_tokens x dim`` (shallow) or ``num_tokens x dim x depth`` (deep).
Needs a ViT with a ``blocks`` list and ``num_prefix_tokens`` (timm's VisionTransformer).
"""

from __future__ import annotations

import torch
from torch import nn

from tlresearch.core.config import check_bool, check_int
from tlresearch.core.errors import ConfigError
from tlresearch.finetune.peft_base import PeftSchedule

PROMPT = "vpt_prompt"


class VisualPromptTuning(PeftSchedule):
    """Only the prompt tokens train (plus the head).

    Args:
        num_tokens: prompt tokens per layer (>= 1).
        deep: ``True``: prompts at every block (VPT-deep); ``False``: at the input only (VPT-shallow).
        combine, combine_args: see :class:`PeftSchedule`.
    """

    name = "vpt"

    def __init__(self, num_tokens: int = 10, deep: bool = True, combine: str | None = None, combine_args: dict | None = None) -> None:
        super().__init__(combine, combine_args)
        check_int("finetune.num_tokens", num_tokens, minimum=1, fix="use >= 1 prompt tokens, e.g. 10.")
        check_bool("finetune.deep", deep)
        self.num_tokens = num_tokens
        self.deep = deep

    def _adapt(self, model: nn.Module) -> None:
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not hasattr(model, "num_prefix_tokens"):
            raise ConfigError(
                f"finetune=vpt needs a vision transformer with tokens (timm's VisionTransformer); this backbone "
                f"({type(model).__name__}) has none. Use finetune=lora, bitfit or norm_tuning, or a timm ViT backbone."
            )
        dim, prefix, n = model.embed_dim, model.num_prefix_tokens, self.num_tokens
        for i, block in enumerate(blocks):
            if i == 0 or self.deep:
                block.register_parameter(PROMPT, nn.Parameter(torch.empty(1, n, dim).normal_(0, 0.02)))
                block.register_forward_pre_hook(_insert(prefix, n, replace=i > 0))
        blocks[-1].register_forward_hook(lambda module, args, out: torch.cat([out[:, :prefix], out[:, prefix + n:]], 1))

    def selects(self, name, param, model) -> bool:
        return name.rsplit(".", 1)[-1] == PROMPT

    def method_label(self) -> str:
        return f"VPT-{'deep' if self.deep else 'shallow'} {self.num_tokens} tokens"


def _insert(prefix: int, n: int, replace: bool):
    """A pre-hook putting the block's prompts after the prefix tokens (replacing the previous ones)."""

    def hook(block: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        prompts = getattr(block, PROMPT).expand(x.shape[0], -1, -1)
        rest_tokens = x[:, prefix + n:] if replace else x[:, prefix:]
        return (torch.cat([x[:, :prefix], prompts, rest_tokens], 1), *rest)

    return hook
