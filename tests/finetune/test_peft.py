"""PEFT schedules (bitfit, norm_tuning, lora, vpt): exactly the intended parameters train, the
frozen ones stay bitwise unchanged, LoRA merges, VPT counts its prompts, checkpoints reload."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import compose_cfg, run_in_process
from tlresearch.checkpoints.partial import PRETRAINED_BASE
from tlresearch.checkpoints.storage import AtomicCheckpointIO
from tlresearch.core.errors import ConfigError
from tlresearch.data.generate import generate_folder
from tlresearch.data.transforms import eval_transform
from tlresearch.evaluate import evaluate
from tlresearch.finetune.lora import merge_adapters
from tlresearch.models.classifier import TransferClassifier, load_classifier
from tlresearch.predict import predict

CLASSES, DIM, DEPTH, SIZE = 4, 64, 2, 32
VIT = {"_target_": "tlresearch.models.timm_backbones.create_backbone", "name": "vit_tiny_patch16_224", "weights": None,
       "img_size": SIZE, "input_size": SIZE, "depth": DEPTH, "embed_dim": DIM, "num_heads": 2}
RESNET = {"_target_": "tlresearch.models.torchvision_backbones.create_backbone", "name": "resnet18", "weights": None}
TARGET = "tlresearch.finetune.{}"
METHODS = {"bitfit": "bitfit.BitFit", "norm_tuning": "norm_tuning.NormTuning", "lora": "lora.LoRA",
           "vpt": "vpt.VisualPromptTuning"}


def classifier(backbone: dict, method: str, **settings) -> TransferClassifier:
    torch.manual_seed(0)
    return TransferClassifier(backbone=backbone, num_classes=CLASSES,
                              finetune={"_target_": TARGET.format(METHODS[method]), **settings},
                              optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3},
                              class_names=[f"class_{i}" for i in range(CLASSES)])


def pretrained_vit(folder, seed: int = 0) -> dict:
    """The tiny ViT with named pretrained weights: a local file (``backbone.checkpoint_file``) of random weights."""
    torch.manual_seed(seed)
    reference = timm.create_model(VIT["name"], pretrained=False, img_size=SIZE, depth=DEPTH, embed_dim=DIM, num_heads=2)
    torch.save(reference.state_dict(), folder / "base.pth")
    return {**VIT, "weights": "DEFAULT", "checkpoint_file": str(folder / "base.pth")}


def trainer(folder, epochs: int) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=folder,
                      enable_checkpointing=False, deterministic=True, plugins=[AtomicCheckpointIO()])


def data(n: int = 64, shuffled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class adds a fixed random template; ``shuffled`` breaks the image-label link."""
    g = torch.Generator().manual_seed(1)
    templates = torch.randn(CLASSES, 3, SIZE, SIZE, generator=g)
    y = torch.arange(n) % CLASSES
    x = 0.5 * torch.randn(n, 3, SIZE, SIZE, generator=g) + templates[y]
    return x, (y[torch.randperm(n, generator=g)] if shuffled else y)


def train(model: TransferClassifier, x, y, steps: int = 25) -> float:
    """Train on (x, y) with the model's own parameter groups; return training accuracy after."""
    opt = torch.optim.Adam(model.optimizer_param_groups(3e-3))
    model.train()
    for i in range(steps):
        idx = torch.arange(i * 16, i * 16 + 16) % len(y)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def expected_trainable(model: TransferClassifier, method: str, **s) -> int:
    """The count each method should train, from its definition (the head included)."""
    net, head = model.backbone.model, sum(p.numel() for p in model.head.parameters())
    if method == "bitfit":
        return head + sum(p.numel() for n, p in net.named_parameters() if n.endswith(".bias") and "lora" not in n)
    if method == "norm_tuning":
        norms = (nn.LayerNorm, nn.BatchNorm2d)
        return head + sum(p.numel() for m in net.modules() if isinstance(m, norms) for p in m.parameters(recurse=False))
    if method == "lora":  # r x (in + out) per adapted projection: timm qkv (d -> 3d) and proj (d -> d)
        return head + DEPTH * s["rank"] * ((DIM + 3 * DIM) + (DIM + DIM))
    return head + s["num_tokens"] * DIM * (DEPTH if s["deep"] else 1)


CASES = [("bitfit", {}), ("norm_tuning", {}), ("lora", {"rank": 4}), ("vpt", {"num_tokens": 3, "deep": True}),
         ("vpt", {"num_tokens": 3, "deep": False})]


@pytest.mark.parametrize("method, settings", CASES)
def test_exactly_the_intended_parameters_train_and_the_rest_stay_bitwise_unchanged(method, settings):
    model = classifier(VIT, method, **settings)
    counts = model.parameter_counts()
    assert counts["params/trainable"] == expected_trainable(model, method, **settings)
    assert counts["params/trainable_share"] == pytest.approx(counts["params/trainable"] / counts["params/total"])
    trainable = {id(p) for g in model.groups if g.start_epoch is not None for p in g.params}
    before = {n: p.detach().clone() for n, p in model.backbone.model.named_parameters() if id(p) not in trainable}
    x, y = data()
    assert train(model, x, y) > 0.9  # chance: 0.25
    after = dict(model.backbone.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("method, settings, name", [
    ("lora", {"rank": 4}, "LoRA r=4"), ("bitfit", {}, "BitFit"), ("vpt", {"num_tokens": 3, "deep": False}, "VPT-shallow 3 tokens"),
    ("bitfit", {"combine": "layer_decay", "combine_args": {"decay": 0.5}}, "BitFit + layer decay")])
def test_params_label_names_the_method_its_settings_and_its_trainable_share(method, settings, name):
    counts = classifier(VIT, method, **settings).parameter_counts()
    label, share = counts["params/label"].removesuffix("%)").split(" (")
    assert label == name and float(share) == pytest.approx(100 * counts["params/trainable_share"], rel=0.05)
    full = TransferClassifier(backbone=VIT, num_classes=CLASSES, finetune={"_target_": "tlresearch.finetune.full.FullFinetune"},
                              optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3})
    assert full.parameter_counts()["params/label"] == "full (100%)"


def test_lora_adapters_merge_into_the_weights_with_the_same_outputs():
    model = classifier(VIT, "lora", rank=4)
    x, y = data()
    train(model, x, y, steps=5)  # B != 0 from here on
    with torch.no_grad():
        unmerged = model(x)
        merge_adapters(model.backbone.model)
        merged = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_vpt_on_a_backbone_without_tokens_is_a_clear_error():
    with pytest.raises(ConfigError, match="finetune=vpt needs a vision transformer"):
        classifier(RESNET, "vpt")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["norm_tuning", "lora"])
def test_cnn_methods_keep_batchnorm_statistics_and_learn(method):
    model = classifier(RESNET, method)
    net = model.backbone.model
    # LoRA's CNN default: resnet18's three 1x1 downsampling convs, r x (in + out) each at r = 8.
    lora = sum(p.numel() for p in model.head.parameters()) + 8 * ((64 + 128) + (128 + 256) + (256 + 512))
    expected = lora if method == "lora" else expected_trainable(model, method)
    assert model.parameter_counts()["params/trainable"] == expected
    stats = {n: b.clone() for n, b in net.named_buffers() if "running" in n}
    x, y = data(16)
    assert train(model, x, y, steps=5) > 0.9
    assert all(torch.equal(stats[n], b) for n, b in net.named_buffers() if n in stats)


def test_shuffled_labels_are_not_learned_on_held_out_images():
    model = classifier(VIT, "lora", rank=4)
    x, y = data(128, shuffled=True)
    train(model, x[:64], y[:64])
    with torch.no_grad():
        held_out = float((model(x[64:]).argmax(1) == y[64:]).float().mean())
    assert held_out < 0.5


def test_a_peft_checkpoint_reloads_the_same_model(tmp_path):
    model = classifier(VIT, "lora", rank=4)
    x, y = data()
    train(model, x, y, steps=5)
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    loaded = load_classifier(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.slow
def test_a_resumed_lora_run_equals_an_uninterrupted_one(tmp_path):
    """Two epochs straight, or one epoch, a checkpoint of only what trained and a second trainer: the same weights."""
    loader = DataLoader(TensorDataset(*data(16)), batch_size=8)
    vit = pretrained_vit(tmp_path)
    straight = classifier(vit, "lora", rank=4)
    trainer(tmp_path, 2).fit(straight, loader)
    first = classifier(vit, "lora", rank=4)
    half = trainer(tmp_path, 1)
    half.fit(first, loader)
    half.save_checkpoint(tmp_path / "epoch1.ckpt")
    assert PRETRAINED_BASE in torch.load(tmp_path / "epoch1.ckpt", weights_only=True)  # the partial path
    resumed = classifier(vit, "lora", rank=4)
    trainer(tmp_path, 2).fit(resumed, loader, ckpt_path=tmp_path / "epoch1.ckpt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def lora_checkpoint(folder) -> tuple[TransferClassifier, object]:
    """A LoRA model on the tiny pretrained ViT, one epoch, saved by Lightning through our writer."""
    model = classifier(pretrained_vit(folder), "lora", rank=4)
    fit = trainer(folder, 1)
    fit.fit(model, DataLoader(TensorDataset(*data(16)), batch_size=8))
    fit.save_checkpoint(folder / "lora.ckpt")
    return model.eval(), folder / "lora.ckpt"


def test_a_lora_checkpoint_keeps_only_what_trained_and_refuses_another_base(tmp_path):
    model, path = lora_checkpoint(tmp_path)
    stored = torch.load(path, weights_only=True)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(stored["state_dict"]) == trained and all("lora_" in n or n.startswith("head.") for n in trained)
    torch.save(model.state_dict(), tmp_path / "full.pt")
    assert path.stat().st_size < (tmp_path / "full.pt").stat().st_size / 4
    assert stored[PRETRAINED_BASE]["backbone"]["checkpoint_file"] == str(tmp_path / "base.pth")
    x, _ = data(8)
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(path)(x), model(x), atol=0, rtol=0)
        reloaded = TransferClassifier.load_from_checkpoint(path).eval()
        torch.testing.assert_close(reloaded(x), model(x), atol=0, rtol=0)
    pretrained_vit(tmp_path, seed=1)  # the weights on disk change under the checkpoint
    with pytest.raises(ConfigError, match=r"refers to the pretrained base .* weights on disk are not those it was trained on"):
        load_classifier(path)


def test_evaluate_and_visualize_take_a_peft_checkpoint(tmp_path, capsys):
    model, path = lora_checkpoint(tmp_path)
    root = generate_folder(tmp_path / "data", classes=CLASSES, images_per_class=5, splits=("train", "test"),
                           min_size=SIZE, max_size=SIZE + 8).root
    cfg = compose_cfg("evaluate", [f"ckpt_path={path}", "data=folder", f"data.root={root}", "data.num_workers=0",
                                   "trainer.enable_progress_bar=false"], tmp_path / "eval")
    metrics, objects = evaluate(cfg)
    assert metrics["status"] == "completed" and metrics["data/test_images"] == CLASSES
    assert torch.equal(objects["model"].head[1].weight, model.head[1].weight)
    run_dir = tmp_path / "vis"
    args = ["task=ideal", f"ckpt_path={path}", "steps=2", "target=[class_1]", "ideal.eval_transforms=0",
            f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    code, output = run_in_process("tlresearch.visualize", args, capsys)
    assert code == 0, output[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_peft_combines_with_layer_decay_and_gradual_and_refuses_other_schedules():
    decayed = {g.name: g for g in classifier(VIT, "bitfit", combine="layer_decay", combine_args={"decay": 0.5}).groups}
    assert [decayed[f"backbone.group{i}"].lr_scale for i in range(DEPTH + 1)] == [0.5 ** (DEPTH + 1 - i) for i in range(DEPTH + 1)]
    gradual = {g.name: g for g in classifier(VIT, "lora", rank=2, combine="gradual").groups}
    assert [gradual[f"backbone.group{i}"].start_epoch for i in (1, 2)] == [2, 1]
    assert gradual["backbone.group0"].start_epoch is None  # the stem has no adapter
    with pytest.raises(ConfigError, match="finetune.combine"):
        classifier(VIT, "lora", combine="linear_probe")


def test_predict_takes_a_peft_checkpoint(tmp_path):
    model = classifier(VIT, "vpt", num_tokens=2)
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    image = tmp_path / "x.png"
    Image.fromarray((torch.rand(SIZE, SIZE, 3) * 255).byte().numpy()).save(image)
    _, out = predict(compose_cfg("predict", [f"ckpt_path={path}", f"images=[{image}]", "top_k=1"], tmp_path / "run"))
    with torch.no_grad():
        probs = model.eval()(eval_transform(model.backbone.preprocessing)(Image.open(image).convert("RGB"))[None]).softmax(-1)[0]
    assert out["predictions"][str(image)][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-6)
