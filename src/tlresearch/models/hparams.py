"""The settings of a TransferClassifier, checked when it is built (``models/classifier.py``):
each mistake a ConfigError naming its key, before any weight is loaded."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlresearch.core.config import check_argument_types, check_choice, is_int, is_number, require
from tlresearch.core.errors import ConfigError
from tlresearch.core.instantiate import instantiate_node


def check_classifier_hparams(num_classes, optimizer, dropout, head_init, label_smoothing, class_names) -> None:
    """Raise a ConfigError naming the key for an invalid value of the classifier's settings."""
    require(is_int(num_classes) and num_classes >= 2, "num_classes", num_classes, "a classifier needs at least 2 classes.")
    lr = optimizer.get("lr") if isinstance(optimizer, dict) else None
    require(_is_positive_number(lr), "optimizer.lr", lr,
            "the learning rate must be a positive number, e.g. optimizer.lr=0.01.")
    _check_optimizer(optimizer)
    require(is_number(dropout) and 0 <= dropout < 1, "model.dropout", dropout, "use a probability in [0, 1).")
    check_choice("model.head_init", head_init, ("default", "zero"))
    require(is_number(label_smoothing) and 0 <= label_smoothing < 1, "model.label_smoothing", label_smoothing,
            "use a value in [0, 1).")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names were given for num_classes={num_classes}.")


def _is_positive_number(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and float(value) > 0
    except (TypeError, ValueError):
        return False


def _check_optimizer(optimizer: dict) -> None:
    """Build the optimizer once on a dummy parameter, so a bad value (a negative weight decay, a
    momentum that is not a number) is reported now, naming the key, rather than when fit starts."""
    factory = instantiate_node(optimizer, "optimizer")
    check_argument_types("optimizer", getattr(factory, "func", factory), getattr(factory, "keywords", {}))
    try:
        factory([nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"The `optimizer` config is invalid: {exc}. Check the values under `optimizer.` (print the composed "
            "config with `--cfg job`)."
        ) from exc
