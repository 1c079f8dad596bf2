"""The bundled backbone families by name: ``create_backbone(name, source="torchvision"|"timm")``.

Configs do not come through here: each ``conf/backbone/*.yaml`` names its family's own factory
(:mod:`tlresearch.models.torchvision_backbones`, :mod:`tlresearch.models.timm_backbones`), and a
new family never joins the table below (CONTRIBUTING.md, "Add a backbone family"). This module
stays for what names a family by ``source``:

* checkpoints written before the families had their own files store their backbone config as
  ``{_target_: tlresearch.models.backbones.create_backbone, source: torchvision|timm, ...}`` in
  their hyper-parameters; evaluate, predict, visualize and resume rebuild the model from it;
* scripts that pick a bundled architecture by name (``create_backbone("resnet18", weights=None)``).

:func:`current_backbone_config` rewrites such an old config into today's form, so that a run
interrupted before the families moved still resumes (its settings compare equal to today's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tlresearch.core.errors import ConfigError, suggest
from tlresearch.models import timm_backbones, torchvision_backbones
from tlresearch.models.backbone import Backbone

#: ``source`` -> the family's factory. Frozen: it holds the sources old checkpoints name.
FAMILIES: dict[str, Callable[..., Backbone]] = {
    "torchvision": torchvision_backbones.create_backbone,
    "timm": timm_backbones.create_backbone,
}


def create_backbone(
    name: str,
    source: str = "torchvision",
    weights: str | None = "DEFAULT",
    input_size: int | None = None,
    checkpoint_file: str | None = None,
    **model_kwargs,
) -> Backbone:
    """Build a :class:`Backbone` of the bundled family ``source``.

    Args:
        name: architecture name in ``source`` (``resnet50``, ``vit_b_16``, any timm model...).
        source: ``torchvision`` or ``timm``.
        weights, input_size, checkpoint_file, **model_kwargs: as the family's factory takes them
            (:func:`tlresearch.models.torchvision_backbones.create_backbone`,
            :func:`tlresearch.models.timm_backbones.create_backbone`).
    """
    try:
        factory = FAMILIES[source]
    except KeyError:
        raise ConfigError(
            f"backbone.source={source!r} is not supported; use one of {sorted(FAMILIES)}.{suggest(source, FAMILIES)}"
        ) from None
    return factory(name, weights, input_size=input_size, checkpoint_file=checkpoint_file, **model_kwargs)


#: The ``_target_`` that old checkpoints name, with a ``source`` key.
LEGACY_TARGET = f"{__name__}.create_backbone"


def current_backbone_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` in today's form: an old ``{_target_: ...backbones.create_backbone, source: S}``
    becomes ``{_target_: <family S's factory>}`` (``source`` dropped); anything else is unchanged."""
    config = dict(config)
    if config.get("_target_") != LEGACY_TARGET or config.get("source", "torchvision") not in FAMILIES:
        return config
    factory = FAMILIES[config.pop("source", "torchvision")]
    return {**config, "_target_": f"{factory.__module__}.{factory.__name__}"}
