"""Checkpoints of only what trained: the pretrained base by reference, checked by its hash.

Under a schedule that never changes the pretrained backbone (PEFT: BitFit, norm tuning, LoRA,
VPT; the linear probe), a checkpoint of a ViT-B/16 would otherwise repeat 86M frozen weights
(344 MB) next to a few hundred thousand trained ones. When the backbone's weights are *named*
(``backbone.weights``, and ``backbone.checkpoint_file`` where set), the checkpoint keeps only the
tensors that train (adapters, prompts, biases, norm parameters, the head) and a reference to the
base (:data:`PRETRAINED_BASE`): the backbone's name, weights and checkpoint file, the keys left
out, the state_dict order and :func:`base_hash`, a SHA-256 of the left-out tensors in a fixed
order (name, dtype, shape, bytes: independent of the file format and memory layout).

Whoever loads the checkpoint builds the model from those named weights first (as training did),
then :func:`restore_base` checks the hash of its base tensors and puts them into the
checkpoint's state_dict: a different base (other weights, another timm/torchvision release that
changed them, an edited local file) is refused with a ConfigError saying what differs. With
``backbone.weights=null`` there is nothing to refer to: the base is stored whole (the
frozen-state mechanism of ``storage.py`` then writes it once per run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from tlresearch.core.errors import ConfigError

#: Checkpoint entry that refers to the pretrained base: ``{"backbone", "hash", "keys", "order"}``.
PRETRAINED_BASE = "pretrained_base"


def base_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of ``tensors`` by sorted name: each name, dtype, shape and contiguous bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def refer_to_base(checkpoint: dict[str, Any], base: Mapping[str, torch.Tensor], backbone: Mapping[str, Any],
                  hash_: str | None = None) -> str:
    """Replace the ``base`` tensors in ``checkpoint``'s state_dict (in place) by a reference to the
    pretrained base built from ``backbone`` (its config: name, weights, checkpoint file); return
    the base's hash (``hash_`` when given: the base never changes, so a run computes it once)."""
    hash_ = hash_ or base_hash(base)
    state = checkpoint["state_dict"]
    checkpoint[PRETRAINED_BASE] = {"backbone": dict(backbone), "hash": hash_, "keys": list(base), "order": list(state)}
    checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in base}
    return hash_


def restore_base(checkpoint: dict[str, Any], base: Mapping[str, torch.Tensor], backbone: Mapping[str, Any], what: str) -> None:
    """Put the tensors of the pretrained base ``base`` (the state_dict of a model built from the
    named weights ``backbone``) into ``checkpoint`` (in place), after checking their hash; a
    checkpoint without a reference is left as it is. ``what`` names the checkpoint in messages."""
    reference = checkpoint.pop(PRETRAINED_BASE, None)
    if reference is None:
        return
    if not isinstance(reference, dict) or not all(isinstance(reference.get(k), t) for k, t in
                                                  {"backbone": dict, "hash": str, "keys": list, "order": list}.items()):
        raise ConfigError(f"{what} is refused: its {PRETRAINED_BASE} entry is malformed ({str(reference)[:100]}). "
                          "Pass a checkpoint written by tlresearch.train.")
    named = {k: reference["backbone"].get(k) for k in ("name", "weights", "checkpoint_file")}
    missing = [k for k in reference["keys"] if k not in base]
    found = base_hash({k: base[k] for k in reference["keys"] if k in base})
    if missing or found != reference["hash"]:
        ours = {k: backbone.get(k) for k in named}
        differs = f"the model built now has {ours}" if ours != named else "the weights on disk are not those it was trained on"
        raise ConfigError(
            f"{what} keeps only the tensors that trained and refers to the pretrained base {named} (hash "
            f"{reference['hash'][:12]}), but {differs} ({len(missing)} base tensors missing, hash {found[:12]}). "
            "Put the same pretrained weights in place (the same backbone.weights / backbone.checkpoint_file file, "
            "the same timm/torchvision version), or use the checkpoint with the base it was trained on."
        )
    state = {**checkpoint["state_dict"], **{k: base[k] for k in reference["keys"]}}
    checkpoint["state_dict"] = {k: state[k] for k in reference["order"] if k in state}
