"""GPU throughput: ResNet-50 fine-tuning images/s in fp32, bf16, bf16 + channels_last, + torch.compile;
feature extraction images/s. One command, a few minutes on one GPU:

    python benchmarks/gpu.py [--batch-size 256] [--steps 30]

Needs a CUDA GPU and exits with a message otherwise (``--smoke`` runs every code path on the
CPU at toy sizes, to check the script itself; its numbers mean nothing).

Training rows: full fine-tuning steps (forward, cross-entropy, backward, SGD) of a ResNet-50 +
linear head on synthetic batches already on the GPU, built from the pieces tlresearch uses
(``create_backbone``, ``autocast_for``, ``to_channels_last``, ``torch.compile``); then the
same through ``TransferClassifier`` + the Lightning Trainer (``trainer.precision=bf16-mixed``,
``model.channels_last=auto``) with batches coming from host memory, i.e. framework and transfer
included. Extraction rows: the frozen backbone's forward pass alone (bf16 + channels_last), and
``tlresearch.protocols.features.extract_features`` on generated JPEGs, decoded by PIL in DataLoader
workers vs in batches on the GPU (``finetune.decode_on_device=true``).

Published anchors: about 2,470 img/s for ResNet-50 AMP training on one A100 80GB (NVIDIA
DeepLearningExamples, batch 256); channels_last gives +47% for ResNet-50 under AMP (timm's
benchmarks). Ratios against fp32 are printed last.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from benchmarks._common import WORKSPACE, machine
from tlresearch.models.performance import autocast_for, to_channels_last
from tlresearch.models.torchvision_backbones import create_backbone

NUM_CLASSES = 37


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(step: Callable[[], None], images_per_step: int, steps: int, warmup: int, device: torch.device) -> float:
    """Images/s of ``step`` over ``steps`` calls after ``warmup`` calls (compilation, cuDNN autotuning)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return images_per_step * steps / (time.perf_counter() - start)


def network(args: argparse.Namespace, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    backbone = create_backbone(args.model, weights=None)
    backbone.pretrained_head = None
    net = nn.Sequential(backbone, nn.Linear(backbone.num_features, NUM_CLASSES)).to(device)
    return to_channels_last(net) if channels_last else net


def training_rate(args: argparse.Namespace, device: torch.device, precision: str, channels_last: bool, compile_: bool) -> float:
    net = network(args, device, channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    fn = torch.compile(net) if compile_ else net
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)

    def step() -> None:
        with autocast_for(device, precision):
            loss = F.cross_entropy(fn(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    warmup = args.warmup * (4 if compile_ else 1)
    return throughput(step, args.batch_size, args.steps, warmup, device)


class StepClock(pl.Callback):
    """Timestamps of training batch ends (the first ``skip`` are warm-up)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.ends.append(time.perf_counter())


def lightning_rate(args: argparse.Namespace, device: torch.device) -> float:
    """TransferClassifier through the Trainer: bf16-mixed, channels_last=auto, host-memory batches."""
    from tlresearch.models.classifier import TransferClassifier

    torch.manual_seed(0)
    model = TransferClassifier(
        backbone={"_target_": "tlresearch.models.torchvision_backbones.create_backbone", "name": args.model, "weights": None},
        num_classes=NUM_CLASSES,
        finetune={"_target_": "tlresearch.finetune.full.FullFinetune"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9},
        channels_last="auto",
    )
    # Whole batches in (pinned) host memory: the Trainer moves each to the GPU (non-blocking), as
    # with a real loader, without a CPU collate step capping the rate.
    batches = [(torch.randn(args.batch_size, 3, args.size, args.size), torch.randint(0, NUM_CLASSES, (args.batch_size,))) for _ in range(4)]
    if device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    clock = StepClock()
    steps = args.warmup + args.steps
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision="bf16-mixed", max_steps=steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock],
    )
    trainer.fit(model, train_dataloaders=loader)
    ends = clock.ends[args.warmup - 1 :]
    return args.batch_size * (len(ends) - 1) / (ends[-1] - ends[0])


def forward_rate(args: argparse.Namespace, device: torch.device) -> float:
    net = network(args, device, channels_last=device.type == "cuda")[0].eval()
    x = torch.randn(args.batch_size * 2, 3, args.size, args.size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.no_grad(), autocast_for(device, "bf16-mixed"):
            net(x)

    return throughput(step, len(x), args.steps, args.warmup, device)


def extraction_rates(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """extract_features on generated JPEGs: PIL in workers vs batched decoding on the device."""
    import os

    from tlresearch.data.folder import ImageFolderDataModule
    from tlresearch.data.generate import generate_folder
    from tlresearch.data.transforms import eval_transform
    from tlresearch.protocols.features import FeatureSpec, extract_features

    root = WORKSPACE / "jpegs"
    generate_folder(root, classes=4, images_per_class=args.jpegs // 4, layout="split", splits=("train",),
                    min_size=300, max_size=500, seed=0)
    dm = ImageFolderDataModule(root, cache_dir=WORKSPACE / "manifests", val_fraction=0.0, test_fraction=0.0, num_workers=0)
    samples = dm.dataset("train").samples
    backbone = network(args, device, channels_last=False)[0]
    pre = backbone.preprocessing.with_crop_size(args.size)
    workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    rates = {}
    for name, on_device in (("PIL in workers", False), ("decode_jpeg on the device", True)):
        spec = FeatureSpec(eval_transform(pre), precision="bf16-mixed", decode_on_device=on_device, preprocessing=pre)
        extract_features(backbone, samples[: args.batch_size], spec, device=device, batch_size=args.batch_size,
                         num_workers=workers)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        extract_features(backbone, samples, spec, device=device, batch_size=args.batch_size, num_workers=workers,
                         pin_memory=device.type == "cuda")
        synchronize(device)
        rates[f"extract_features, {name} ({workers} workers)"] = len(samples) / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per row (x4 with torch.compile)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--jpegs", type=int, default=1024, help="generated JPEGs for the extraction rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--smoke", action="store_true",
                        help="run every code path on the CPU at toy sizes (checks the script; numbers mean nothing)")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.steps, args.warmup, args.size, args.model, args.jpegs = 4, 2, 1, 64, "resnet18", 16
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False). "
                 "Run it on a GPU machine, or with --smoke to check the script on a CPU.")
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True

    started = time.perf_counter()
    rows: dict[str, float] = {}
    rows["fp32"] = training_rate(args, device, "32-true", channels_last=False, compile_=False)
    rows["bf16"] = training_rate(args, device, "bf16-mixed", channels_last=False, compile_=False)
    rows["bf16 + channels_last"] = training_rate(args, device, "bf16-mixed", channels_last=True, compile_=False)
    if not args.no_compile:
        rows["bf16 + channels_last + compile"] = training_rate(args, device, "bf16-mixed", channels_last=True, compile_=True)
    rows["tlresearch Trainer: bf16-mixed, channels_last=auto"] = lightning_rate(args, device)
    extraction = {"backbone forward, no grad, bf16 + channels_last": forward_rate(args, device), **extraction_rates(args, device)}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    print(f"\n== GPU throughput: {args.model} @{args.size} px, batch {args.batch_size}, {args.steps} timed steps per row")
    print(f"device: {name}; {machine()}")
    print(f"  {'fine-tuning (img/s)':<58} {'img/s':>9}")
    for key, value in rows.items():
        print(f"  {key:<58} {value:>9.0f}")
    print(f"  {'feature extraction (img/s)':<58}")
    for key, value in extraction.items():
        print(f"  {key:<58} {value:>9.0f}")
    print(f"  total time {time.perf_counter() - started:.0f} s; "
          "anchors: ~2,470 img/s RN50 AMP training on an A100 (NVIDIA); channels_last +47% under AMP (timm)")
    print("ratios:")
    for key, value in rows.items():
        if key != "fp32":
            print(f"  {key} / fp32: {value / rows['fp32']:.2f}x")
    print(f"  bf16 + channels_last / bf16: {rows['bf16 + channels_last'] / rows['bf16']:.2f}x  (timm: ~1.47x)")


if __name__ == "__main__":
    main()
