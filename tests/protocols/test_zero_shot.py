"""finetune=zero_shot: CLIP's text tower as the classifier (open_clip), nothing trained.

The pretrained path runs the real way: open_clip's and timm's checkpoints of OpenAI's ViT-B/16
are seeded into a Hugging Face cache under their exact repository and file names (one random
CLIP model, saved by open_clip and converted by timm), and both libraries load them offline.
To keep the CPU time small the model behind those names is shrunk (open_clip's registered
config and timm's constructor arguments, both to one transformer block of width 64); every
name, file, key conversion and loading step is the real one.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip import factory
from safetensors.torch import save_file
from timm.models.vision_transformer import checkpoint_filter_fn

from tests.helpers import run_in_process
from tlresearch.core.errors import ConfigError
from tlresearch.data.images import load_rgb
from tlresearch.data.transforms import eval_transform
from tlresearch.finetune.zero_shot import DATASET_TEMPLATES, ZeroShot, prompt_class_names
from tlresearch.models import clip_towers
from tlresearch.models.timm_backbones import create_backbone
from tlresearch.protocols.zero_shot import class_embeddings, image_embeddings, resolve_templates

OPENAI_REPO = "timm/vit_base_patch16_clip_224.openai"  # where both open_clip's and timm's OpenAI ViT-B/16 files live
TINY_OPEN_CLIP = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32,
                  "patch_size": 16}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
# The same tower built by timm (num_classes: the projection's width, timm's head of CLIP weights).
TINY_TIMM = ["+backbone.depth=1", "+backbone.embed_dim=64", "+backbone.num_heads=2", "+backbone.num_classes=32"]


def seed_hub_file(cache: Path, repo_id: str, filename: str, tensors: dict[str, torch.Tensor]) -> None:
    """A file as huggingface_hub's cache holds a download: models--<org>--<name>/snapshots/<commit>/, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(repo / "snapshots" / commit / filename))


@pytest.fixture(scope="module")
def clip_reference(tmp_path_factory):
    """One random (shrunk) CLIP model, its checkpoints seeded for open_clip and timm under OpenAI's names."""
    cache = tmp_path_factory.mktemp("hf-hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(factory._MODEL_CONFIGS, "ViT-B-16-quickgelu", TINY_OPEN_CLIP)
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    with torch.no_grad():  # a sharper temperature than the init's 1/0.07, so that predictions differ from uniform
        model.logit_scale.fill_(4.0)
    state = model.state_dict()
    seed_hub_file(cache, OPENAI_REPO, "open_clip_model.safetensors", state)
    tower = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, depth=1, embed_dim=64, num_heads=2, num_classes=32)
    seed_hub_file(cache, OPENAI_REPO, "model.safetensors", checkpoint_filter_fn(state, tower))
    return SimpleNamespace(cache=cache, model=model.eval())


@pytest.fixture
def clip_hub(clip_reference, monkeypatch):
    """The seeded cache in use (offline), and open_clip's ViT-B-16-quickgelu shrunk as it was saved."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(clip_reference.cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setitem(factory._MODEL_CONFIGS, "ViT-B-16-quickgelu", TINY_OPEN_CLIP)
    return clip_reference


def fake_backbone(architecture: str = "vit_base_patch16_clip_quickgelu_224", tag: str = "openai", weights: str | None = "DEFAULT",
                  source: str = "timm", name: str = "vit_base_patch16_clip_quickgelu_224.openai") -> SimpleNamespace:
    model = SimpleNamespace(pretrained_cfg={"architecture": architecture, "tag": tag})
    return SimpleNamespace(model=model, weights=weights, source=source, name=name)


# ---------------------------------------------------------------------------------------- the head's math


def test_class_embeddings_average_normalised_templates_and_renormalise():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(100, 8, generator=gen) * torch.rand(100, 1, generator=gen) * 5  # token id -> embedding, varied norms
    prompts: list[str] = []

    def tokenize(texts):
        prompts.extend(texts)
        return torch.tensor([[hash(t) % 100] for t in texts])

    def encode(tokens):
        return table[tokens[:, 0]]

    names, templates = ["cat", "dog", "fox"], ["a photo of a {}.", "a {} in a video game.", "art of the {}."]
    got = class_embeddings(encode, tokenize, names, templates, batch_size=2)
    for c, name in enumerate(names):
        per_template = torch.stack([table[hash(t.format(name)) % 100] for t in templates])
        mean = (per_template / per_template.norm(dim=1, keepdim=True)).mean(0)
        torch.testing.assert_close(got[c], mean / mean.norm())
    assert prompts == [t.format(n) for n in names for t in templates]


def test_zero_shot_logits_pick_the_class_whose_text_matches_the_image():
    """A constructed CLIP: the prompts of class k embed near direction k (each template adds its
    own offset), images project near their class's direction: every image is classified right,
    and the logits are logit_scale x cosine similarity."""
    gen = torch.Generator().manual_seed(1)
    classes, dim = 5, 16
    directions = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0][:classes]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    offsets = 0.3 * torch.randn(len(templates), dim, generator=gen)
    names = [f"class {k}" for k in range(classes)]
    prompts = {t.format(n): 3.0 * directions[k] + offsets[i] for k, n in enumerate(names) for i, t in enumerate(templates)}
    ids = list(prompts)

    text = class_embeddings(lambda tokens: torch.stack([prompts[ids[i]] for i in tokens[:, 0]]),
                            lambda texts: torch.tensor([[ids.index(t)] for t in texts]), names, templates)
    projection = torch.randn(24, dim, generator=gen)
    labels = torch.arange(classes).repeat(4)
    wanted = directions[labels] + 0.05 * torch.randn(len(labels), dim, generator=gen)
    features = wanted @ torch.linalg.pinv(projection)  # backbone features whose projection is the wanted embedding
    images = image_embeddings(features, projection)
    logits = 50.0 * images @ text.t()
    assert (logits.argmax(1) == labels).all()
    torch.testing.assert_close(logits, 50.0 * F.cosine_similarity(images[:, None], text[None], dim=-1), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------- settings


def test_templates_and_class_words():
    assert resolve_templates("dataset", "pets") == (("a photo of a {}, a type of pet.",), "CLIP's pets")
    openai, source = resolve_templates("dataset", "folder")  # no templates of its own: CLIP's 80 ImageNet ones
    assert len(openai) == 80 and "openai" in source and all(t.count("{}") == 1 for t in openai)
    assert len(resolve_templates("simple", "pets")[0]) == 7
    assert resolve_templates(("itap of a {}.",), "pets") == (("itap of a {}.",), "given")
    assert all(t.count("{}") == 1 for ts in DATASET_TEMPLATES.values() for t in ts)
    assert prompt_class_names("pets", ["American Pit Bull Terrier"]) == ["American Pit Bull Terrier"]
    assert prompt_class_names("folder", ["car_side", "SeaLake"]) == ["car side", "Sea Lake"]
    assert prompt_class_names("eurosat", ["SeaLake", "AnnualCrop"]) == ["lake or sea", "annual crop land"]


@pytest.mark.parametrize("kwargs, key", [
    ({"templates": "imagenet"}, "finetune.templates"), ({"templates": ["a photo"]}, "finetune.templates"),
    ({"class_names": "cat"}, "finetune.class_names"), ({"text_batch_size": 0}, "finetune.text_batch_size"),
])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ZeroShot(**kwargs)


def test_nothing_trains():
    schedule = ZeroShot()
    groups = schedule.groups([torch.nn.Parameter(torch.zeros(2))], [("group0", [torch.nn.Parameter(torch.zeros(3))])])
    assert [g.start_epoch for g in groups] == [None, None]


@pytest.mark.parametrize("backbone, message", [
    (fake_backbone(architecture="resnet18", tag="a1_in1k", name="resnet18"), r"backbone.name='resnet18' is invalid .*backbone=clip_vitb16"),
    (fake_backbone(source="torchvision", name="vit_b_16"), r"backbone.name='vit_b_16' is invalid"),
    (fake_backbone(architecture="vit_base_patch16_clip_224"), r"backbone.name=.* is invalid"),  # OpenAI's weights without QuickGELU
    (fake_backbone(weights=None), r"backbone.weights=null is invalid .*DEFAULT"),
])
def test_a_backbone_without_a_known_clip_text_tower_is_refused(backbone, message):
    with pytest.raises(ConfigError, match=message):
        clip_towers.load_clip_text(backbone)


def test_without_open_clip_the_error_names_the_extra(monkeypatch):
    monkeypatch.setattr(clip_towers, "open_clip", None)
    with pytest.raises(ConfigError, match=r"pip install 'tlresearch\[clip\]'"):
        clip_towers.load_clip_text(fake_backbone())


def test_the_open_clip_name_is_one_the_installed_open_clip_lists(monkeypatch):
    assert clip_towers.open_clip_name(fake_backbone()) == ("ViT-B-16-quickgelu", "openai")
    monkeypatch.setattr(open_clip, "list_pretrained", lambda: [("ViT-B-16", "openai")])  # versions without -quickgelu/openai
    assert clip_towers.open_clip_name(fake_backbone()) == ("ViT-B-16", "openai")
    laion = fake_backbone(architecture="vit_base_patch16_clip_224", tag="laion2b")
    assert clip_towers.open_clip_name(laion) == ("ViT-B-16", "laion2b_s34b_b88k")


def test_image_tower_of_another_model_is_refused():
    timm_like = torch.nn.Module()
    timm_like.norm = torch.nn.LayerNorm(4)
    timm_like.patch_embed = torch.nn.Module()
    timm_like.patch_embed.proj = torch.nn.Conv2d(3, 4, 2)
    clip_like = torch.nn.Module()
    clip_like.visual = torch.nn.Module()
    clip_like.visual.conv1 = torch.nn.Conv2d(3, 4, 2)
    clip_like.visual.ln_post = torch.nn.LayerNorm(4)
    with pytest.raises(ConfigError, match="not the image tower"):
        clip_towers.check_same_image_tower(timm_like, clip_like, "open_clip X/y")
    clip_like.visual.conv1.load_state_dict(timm_like.patch_embed.proj.state_dict())
    clip_towers.check_same_image_tower(timm_like, clip_like, "open_clip X/y")  # the same tensors: accepted


# ---------------------------------------------------------------------------------------- end to end


def test_offline_without_the_text_tower_says_where_it_comes_from(clip_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="open_clip's ViT-B-16-quickgelu/openai weights .*HF_HOME"):
        clip_towers.load_clip_text(fake_backbone())


@pytest.mark.slow
def test_zero_shot_run_is_clip_and_sits_next_to_logistic_in_the_table(clip_hub, pets_root, tmp_path, capsys):
    """backbone=clip_vitb16 finetune=logistic,zero_shot as one sweep: the zero-shot run's predictions are
    open_clip's own zero-shot classifier (its encode_image and encode_text on the same images and
    prompts), nothing trains, and the table shows both columns."""
    sweep = tmp_path / "sweep"
    common = ["backbone=clip_vitb16", *TINY_TIMM, "data=pets", f"data.root={pets_root}", "data.num_breeds=3", "data.val_per_class=2",
              "data.num_workers=0", "trainer.enable_progress_bar=false"]
    code, out = run_in_process("tlresearch.train", ["-m", *common, "finetune=logistic", "finetune.num_l2=2",
                                                    f"hydra.sweep.dir={sweep / 'logistic'}"], capsys)
    assert code == 0, out
    code, out = run_in_process("tlresearch.train", ["-m", *common, "finetune=zero_shot", f"hydra.sweep.dir={sweep / 'zero_shot'}"], capsys)
    assert code == 0, out
    run = sweep / "zero_shot" / "0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["params/trainable"] == 0 and metrics["params/trainable_share"] == 0
    assert metrics["params/total"] == sum(p.numel() for p in clip_hub.model.parameters())  # the whole CLIP model
    assert {"test/acc", "test/mean_class_acc", "test/primary", "test/acc_ci_low", "zero_shot/templates"} <= set(metrics)
    log = (run / "train.log").read_text()  # the test features logistic extracted serve zero-shot too; train/val are never read
    assert re.search(r"test features of \d+ images: read from the cache", log) and "train features" not in log
    record = json.loads((run / "zero_shot.json").read_text())
    assert record["templates"] == ["a photo of a {}, a type of pet."] and record["class_names"] == ["Abyssinian", "American Bulldog",
                                                                                                    "American Pit Bull Terrier"]
    assert record["text_tower"] == "open_clip:ViT-B-16-quickgelu/openai" and record["logit_scale"] == pytest.approx(torch.e ** 4)

    # open_clip's zero-shot classifier on the same preprocessed test images
    with (run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    clip = clip_hub.model
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    with torch.no_grad():
        text = F.normalize(clip.encode_text(tokenizer([f"a photo of a {n}, a type of pet." for n in record["class_names"]])), dim=-1)
        images = F.normalize(clip.encode_image(transformed_images(rows, pets_root / "oxford-iiit-pet")), dim=-1)
        probs = (clip.logit_scale.exp() * images @ text.t()).softmax(-1)
    assert len(rows) == len(probs)
    torch.testing.assert_close(torch.tensor([float(r["confidence"]) for r in rows]), probs.max(1).values, atol=1e-4, rtol=1e-4)
    assert [r["prediction"] for r in rows] == [record["class_names"][i] for i in probs.argmax(1)]

    code, out = run_in_process("tlresearch.table", [str(sweep), "--rows", "backbone", "--cols", "finetune"], capsys)
    assert code == 0, out
    header = next(line for line in out.splitlines() if line.startswith("|"))
    assert [h.strip() for h in header.strip("|").split("|")] == ["backbone", "finetune=logistic", "finetune=zero_shot"]


def transformed_images(rows: list[dict[str, str]], root: Path) -> torch.Tensor:
    """predictions.csv's images (paths relative to the dataset's root) through the eval transform of
    the backbone's preprocessing (timm's data config)."""
    backbone = create_backbone("vit_base_patch16_clip_quickgelu_224.openai", weights=None, depth=1, embed_dim=64, num_heads=2)
    transform = eval_transform(backbone.preprocessing)
    return torch.stack([transform(load_rgb(root / r["path"])) for r in rows])
