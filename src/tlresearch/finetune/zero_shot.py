"""Zero-shot CLIP classification (Radford et al. 2021): nothing trains, the head is written in words.

``finetune=zero_shot`` builds the classifier from the CLIP text tower: each class name is put
into every prompt template (``"a photo of a {}, a type of pet."``), the prompts are embedded,
L2-normalised, averaged over the templates and normalised again; an image's logits are
``logit_scale * normalised image embedding @ class embeddings``. The image embedding is the
backbone's (a CLIP image tower) followed by the same CLIP model's projection.

This module holds what the config says: the schedule (everything frozen, no group trains), its
validated :class:`ZeroShotSettings`, the per-dataset prompt templates of CLIP's evaluation
(:data:`DATASET_TEMPLATES`) and how class names become prompt text (:func:`prompt_class_names`).
The run is the protocol's (``tlresearch.protocols.zero_shot``); the text tower comes from
open_clip (``tlresearch.models.clip_towers``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tlresearch.core.config import check_bool, check_int, require
from tlresearch.finetune.base import FreezeSchedule, GroupSpec, ProtocolSettings

#: ``finetune.templates`` by name: ``dataset`` (the dataset's own templates in
#: :data:`DATASET_TEMPLATES`, else ``openai``), ``openai`` (CLIP's 80 ImageNet templates) and
#: ``simple`` (CLIP's 7 selected ImageNet templates), both as open_clip ships them
#: (``open_clip.zero_shot_metadata``).
TEMPLATE_SETS = ("dataset", "openai", "simple")

#: The prompt templates of CLIP's evaluation per dataset (``{}``: the class name), by the
#: DataModule's ``name``: CLIP's ``data/prompts.md`` (Radford et al. 2021), as LAION's
#: CLIP_benchmark uses them. A dataset not listed gets the ``openai`` set.
DATASET_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pets": ("a photo of a {}, a type of pet.",),
    "flowers102": ("a photo of a {}, a type of flower.",),
    "food101": ("a photo of {}, a type of food.",),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
    "dtd": (
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.", "a photo of a {} object.",
        "a photo of the {} texture.", "a photo of the {} pattern.", "a photo of the {} thing.", "a photo of the {} object.",
    ),
    "eurosat": ("a centered satellite photo of {}.", "a centered satellite photo of a {}.", "a centered satellite photo of the {}."),
    "stanford_cars": (
        "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
        "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}.",
    ),
    "sun397": ("a photo of a {}.", "a photo of the {}."),
    "caltech101": (
        "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.", "a sketch of a {}.", "a tattoo of a {}.",
        "a toy {}.", "a rendition of a {}.", "a embroidered {}.", "a cartoon {}.", "a {} in a video game.", "a plushie {}.",
        "a origami {}.", "art of a {}.", "graffiti of a {}.", "a drawing of a {}.", "a doodle of a {}.", "a photo of the {}.",
        "a painting of the {}.", "the plastic {}.", "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.",
        "the toy {}.", "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.", "the {} in a video game.",
        "the plushie {}.", "the origami {}.", "art of the {}.", "graffiti of the {}.", "a drawing of the {}.", "a doodle of the {}.",
    ),
    "cifar10": (
        "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
        "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
        "a photo of a big {}.", "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
        "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
        "a photo of the small {}.", "a photo of the big {}.",
    ),
    "svhn": (
        "a photo of the number {} written on a sign", "an outdoor house number {}", "the number {} in the center of the image",
        "an outdoor number {} writte on a sign", "an outdoor number {}", "a centered image of the number {}",
    ),
    "pcam": ("a histopathology slide showing {}", "histopathology image of {}"),
}  # fmt: skip
DATASET_TEMPLATES["cifar100"] = DATASET_TEMPLATES["cifar10"]

#: Class names a prompt should not use as the dataset spells them (CLIP's ``data/prompts.md``):
#: by the DataModule's ``name``, raw class name -> words.
DATASET_CLASS_NAMES: dict[str, dict[str, str]] = {
    "eurosat": {
        "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "brushland or shrubland",
        "Highway": "highway or road", "Industrial": "industrial buildings or commercial buildings", "Pasture": "pasture land",
        "PermanentCrop": "permanent crop land", "Residential": "residential buildings or homes or apartments", "River": "river",
        "SeaLake": "lake or sea",
    },
    "pcam": {"no_tumor": "lymph node", "tumor": "lymph node containing metastatic tumor tissue"},
}  # fmt: skip


@dataclass(frozen=True)
class ZeroShotSettings(ProtocolSettings):
    """What the zero-shot protocol needs, validated by :class:`ZeroShot`.

    Args:
        templates: a name of :data:`TEMPLATE_SETS` or the templates themselves (each with one ``{}``).
        class_names: the words of each class in the dataset's class order (``None``: from the
            dataset's names, :func:`prompt_class_names`).
        text_batch_size: prompts embedded per forward pass of the text tower.
        cache_features, decode_on_device: as for the logistic probe (the image features are the
            backbone's, read from or written to the same feature cache).
    """

    templates: str | tuple[str, ...] = "dataset"
    class_names: tuple[str, ...] | None = None
    text_batch_size: int = 256
    cache_features: bool = True
    decode_on_device: bool = False


class ZeroShot(FreezeSchedule):
    """The schedule of ``finetune=zero_shot``: no parameter trains (the head is computed from
    text), and the protocol's settings.

    Args:
        templates: ``dataset`` (the dataset's own CLIP templates, else ``openai``), ``openai``,
            ``simple``, or a list of templates, each with one ``{}`` for the class name.
        class_names: ``null`` (the dataset's class names as words) or one name per class.
        text_batch_size: prompts per forward pass of the text tower.
        cache_features: store the test split's image features in the feature cache (shared with
            ``finetune=logistic`` and ``linear_probe`` runs of the same backbone); ``False``: memory only.
        decode_on_device: decode JPEGs in batches on the device while extracting.
    """

    name = "zero_shot"
    keeps_pretrained_base = True

    def __init__(
        self,
        templates: str | Sequence[str] = "dataset",
        class_names: Sequence[str] | None = None,
        text_batch_size: int = 256,
        cache_features: bool = True,
        decode_on_device: bool = False,
    ) -> None:
        self.templates = check_templates(templates)
        if class_names is not None:
            require(not isinstance(class_names, str) and len(class_names) > 0 and all(isinstance(c, str) and c for c in class_names),
                    "finetune.class_names", class_names, "use null (the dataset's class names) or a list with one name per class.")
            class_names = tuple(class_names)
        self.class_names = class_names
        self.text_batch_size = check_int("finetune.text_batch_size", text_batch_size, minimum=1, fix="use a positive integer, e.g. 256.")
        self.cache_features = check_bool("finetune.cache_features", cache_features)
        self.decode_on_device = check_bool("finetune.decode_on_device", decode_on_device)

    def groups(self, head, blocks):
        """Every group frozen for the whole run, the head included: nothing trains."""
        return [GroupSpec("head", head, 0.0, None), *self.backbone_groups(blocks)]

    def backbone_groups(self, blocks):
        return [GroupSpec(f"backbone.{name}", params, 0.0, None) for name, params in blocks]

    def label(self) -> str:
        return "zero-shot"

    def protocol(self) -> ZeroShotSettings:
        """The head from the text tower, one pass over the test split, instead of the epoch loop."""
        return ZeroShotSettings(self.templates, self.class_names, self.text_batch_size, self.cache_features, self.decode_on_device)


def check_templates(templates: str | Sequence[str]) -> str | tuple[str, ...]:
    """``finetune.templates``: a name of :data:`TEMPLATE_SETS`, or templates with one ``{}`` each."""
    if isinstance(templates, str):
        require(templates in TEMPLATE_SETS, "finetune.templates", templates,
                f"use one of {list(TEMPLATE_SETS)} or a list of templates with one {{}} each, e.g. ['a photo of a {{}}.'].")
        return templates
    templates = tuple(templates)
    require(len(templates) > 0 and all(isinstance(t, str) and t.count("{}") == 1 and "{0}" not in t for t in templates),
            "finetune.templates", list(templates), "each template needs exactly one {} where the class name goes, e.g. 'a photo of a {}.'.")
    return templates


def dataset_templates(dataset: str) -> tuple[str, ...] | None:
    """The dataset's own templates (by its DataModule ``name``), or None when CLIP has none for it."""
    return DATASET_TEMPLATES.get(dataset)


def prompt_class_names(dataset: str, classes: Sequence[str]) -> list[str]:
    """Class names as prompt words: CLIP's wording where :data:`DATASET_CLASS_NAMES` has it,
    else the name with underscores as spaces and CamelCase split (``"american_bulldog"`` ->
    ``"american bulldog"``, ``"HerbaceousVegetation"`` -> ``"Herbaceous Vegetation"``)."""
    known = DATASET_CLASS_NAMES.get(dataset, {})
    return [known.get(c) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", c.replace("_", " ")).strip() for c in classes]
