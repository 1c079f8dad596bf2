"""Framework overhead: a training epoch through tlresearch vs a plain PyTorch loop.

    python benchmarks/framework_overhead.py [--rounds 4] [--images-per-class 48]

Both sides train the identical network (a ResNet-18 from the same config, full fine-tuning),
on the identical data (the same DataModule's training loader: same files, transforms, batch
size, workers), with the same SGD settings. tlresearch runs ``tlresearch.train.train`` (the
task behind the CLI, with its default callbacks and CSV logging; validation and checkpoints
happen between epochs and are not timed); the plain side is ``for x, y in loader: loss =
F.cross_entropy(model(x), y); backward; step``. Each round runs both for two epochs and times
every training step of the second (data loading included; the first epoch warms up); the
medians over all rounds are compared (robust to another process taking a core for a while).
Target: tlresearch / plain <= 1.05.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks._common import CLOCK, WORKSPACE, clock_of, compose, interleave, median, quiet_train, report, set_threads, step_durations
from tlresearch.core.instantiate import instantiate_node
from tlresearch.data.generate import generate_folder
from tlresearch.train import build_classifier

EPOCHS = 2


def overrides(root: pathlib.Path, batch_size: int) -> list[str]:
    return [
        "backbone=resnet18", "backbone.weights=null", "backbone.input_size=64",
        "data=folder", f"data.root={root}", "data.num_workers=0", f"data.batch_size={batch_size}",
        "finetune=full", "optimizer=sgd", "scheduler=none", f"trainer.max_epochs={EPOCHS}",
        "trainer.num_sanity_val_steps=0", "test_after_fit=false", *CLOCK,
    ]


def tlresearch_steps(cfg) -> list[float]:
    """Step durations of the second epoch (the first warms up)."""
    _, objects = quiet_train(cfg)
    return clock_of(objects).step_seconds(EPOCHS - 1)


def plain_steps(cfg) -> list[float]:
    """The same model, loader and optimizer in a hand-written loop."""
    torch.manual_seed(cfg.seed)
    datamodule = instantiate_node(cfg.data, "data")
    model = build_classifier(cfg, datamodule.num_classes, datamodule.classes)
    datamodule.set_preprocessing(model.backbone.preprocessing)
    net = torch.nn.Sequential(model.backbone, model.head).train()
    opt = cfg.optimizer
    optimizer = torch.optim.SGD(net.parameters(), lr=opt.lr, momentum=opt.get("momentum", 0.0), weight_decay=opt.get("weight_decay", 0.0))
    loader = datamodule.train_dataloader()
    for _ in range(EPOCHS):
        start, ends = time.perf_counter(), []
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ends.append(time.perf_counter())
    return step_durations(start, ends)  # the last epoch's steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images-per-class", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    set_threads(args.threads)

    root = WORKSPACE / "folder"
    generate_folder(root, classes=4, images_per_class=args.images_per_class, min_size=80, max_size=160, seed=0)
    cfg = compose(overrides(root, args.batch_size), "overhead")
    steps = interleave({"tlresearch": lambda: tlresearch_steps(cfg), "plain": lambda: plain_steps(cfg)}, args.rounds)

    n_train = len(instantiate_node(cfg.data, "data").dataset("train"))
    per_epoch = -(-n_train // args.batch_size)
    tl, plain = median(steps["tlresearch"]), median(steps["plain"])
    rows = [
        ("setup", f"resnet18 @64 px, full fine-tuning, SGD, batch {args.batch_size}, {n_train} training images "
                  f"({per_epoch} steps/epoch), workers 0, {args.rounds} rounds, torch threads {torch.get_num_threads()}"),
        ("tlresearch step, data included (median)",
         f"{tl * 1e3:.1f} ms  ({len(steps['tlresearch'])} steps; epoch ~{tl * per_epoch:.2f} s)"),
        ("plain PyTorch step, data included (median)",
         f"{plain * 1e3:.1f} ms  ({len(steps['plain'])} steps; epoch ~{plain * per_epoch:.2f} s)"),
    ]
    # Secondary: whole training epochs (sums of the steps, epoch-boundary costs included), noisier.
    epochs = {side: [sum(values[i:i + per_epoch]) for i in range(0, len(values), per_epoch)] for side, values in steps.items()}
    rows.append(("training epoch, tlresearch vs plain (medians)",
                 f"{median(epochs['tlresearch']):.2f} s vs {median(epochs['plain']):.2f} s"))
    report(
        "Framework overhead: training epoch, tlresearch vs plain PyTorch",
        rows,
        [
            ("tlresearch / plain training-epoch time (median of epochs)", median(epochs["tlresearch"]) / median(epochs["plain"]),
             "noisier; for information"),
            ("tlresearch / plain time per training step (median of steps)", tl / plain, "target <= 1.05"),
        ],
    )


if __name__ == "__main__":
    main()
