"""The bundled backbone families by name: ``create_backbone(name, source="torchvision"|"timm")``.

Configs do not come through here: each ``conf/backbone/*.yaml`` names its family's own factory
(:mod:`tlresearch.models.torchvision_backbones`, :mod:`tlresearch.models.timm_backbones`), and a
new family never joins the table below (CONTRIBUTING.md, "Add a backbone family"). This module
stays for what names a family by ``source``:

* checkpoints written before the families had their own files store their backbone config as
  ``{_target_: tlresearch.models.backbones.create_backbone, source: torchvision|timm, ...}`` in
  their hyper-parameters; evaluate, predict, visualize and resume rebuild the model from it;
* scripts that pick a bundled architecture by name (``create_backbone("resnet18", weights=None)``).
"""

from __future__ import annotations

from collections.abc import Callable

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
