"""Linear probe: cached vs uncached features, per epoch and end to end; the L-BFGS protocol's time.

    python benchmarks/linear_probe.py [--epochs 20] [--images-per-class 120] [--input-size 112]

Both sides run ``tlresearch.train.train`` with ``finetune=linear_probe data.augment.enabled=false``
(a frozen ResNet-18, the setting where the cache applies), differing only in
``finetune.cache_features``. The cached run starts from an empty cache, so its end-to-end time
includes extracting the features. Per epoch: the median start-to-start time of epochs 2..N
(training, validation, checkpointing, logging). Targets: cached epochs >= 20x faster, the
whole run >= 10x faster. Then ``finetune=logistic`` on the same (now cached) features, and the
45-value L-BFGS path on Oxford-IIIT Pet-sized features (2940 train / 740 val x 2048, 37
classes; synthetic, so it runs anywhere).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch

from benchmarks._common import CLOCK, WORKSPACE, clock_of, compose, median, quiet_train, report, set_threads
from tlresearch.data.generate import generate_folder
from tlresearch.finetune.logistic import LogisticProbe
from tlresearch.protocols.logistic_solver import regularization_path


def probe_overrides(root: pathlib.Path, args: argparse.Namespace) -> list[str]:
    return [
        "backbone=resnet18", "backbone.weights=null", f"backbone.input_size={args.input_size}",
        "data=folder", f"data.root={root}", "data.augment.enabled=false", f"data.batch_size={args.batch_size}",
        "finetune=linear_probe", f"trainer.max_epochs={args.epochs}", *CLOCK,
    ]


def timed_run(overrides: list[str], name: str) -> tuple[float, list[float], dict]:
    """(wall seconds of the whole task, per-epoch seconds, metrics)."""
    cfg = compose(overrides, name)
    start = time.perf_counter()
    metrics, objects = quiet_train(cfg)
    return time.perf_counter() - start, clock_of(objects).epoch_seconds(), metrics


def pets_sized_path_seconds() -> tuple[float, int]:
    """The 45-value path on synthetic features shaped like ResNet-50 features of Oxford-IIIT Pet."""
    gen = torch.Generator().manual_seed(0)
    classes, dim = 37, 2048
    centres = torch.randn(classes, dim, generator=gen)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        return (0.04 * centres[y] + torch.randn(n, dim, generator=gen)).relu(), y

    train, val = split(2940), split(740)
    probe = LogisticProbe()
    start = time.perf_counter()
    path = regularization_path(train, val, classes, probe.l2_path(), max_iter=probe.max_iter, tolerance=probe.tolerance,
                               history_size=probe.history_size)
    return time.perf_counter() - start, sum(int(p["iterations"]) for p in path.points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--images-per-class", type=int, default=120)
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    set_threads(args.threads)

    root = WORKSPACE / "folder"
    generate = generate_folder(root, classes=5, images_per_class=args.images_per_class, min_size=160, max_size=320, seed=0)
    common = probe_overrides(root, args)
    cache_dir = WORKSPACE / "feature-cache"
    cached_e2e, cached_epochs, cached_m = timed_run([*common, "finetune.cache_features=true", f"paths.cache_dir={cache_dir}"], "cached")
    plain_e2e, plain_epochs, plain_m = timed_run([*common, "finetune.cache_features=false"], "uncached")
    warm_e2e, _, _ = timed_run([*common, "finetune.cache_features=true", f"paths.cache_dir={cache_dir}", "optimizer.lr=0.02"],
                               "cached-warm")

    logistic_cfg = [*common, "finetune=logistic", f"paths.cache_dir={cache_dir}"]
    logistic_e2e, _, logistic_m = timed_run(logistic_cfg, "logistic")
    pets_s, pets_iters = pets_sized_path_seconds()

    per_epoch_plain, per_epoch_cached = median(plain_epochs[1:]), median(cached_epochs[1:])
    rows = [
        ("setup", f"resnet18 @{args.input_size} px frozen, {generate.counts} images, batch {args.batch_size}, {args.epochs} epochs, "
                  f"torch threads {torch.get_num_threads()}"),
        ("uncached: epoch 2+ (median)", f"{per_epoch_plain:.3f} s"),
        ("cached:   epoch 2+ (median)", f"{per_epoch_cached:.4f} s"),
        ("uncached: whole run", f"{plain_e2e:.1f} s  (test/acc {plain_m['test/acc']:.3f})"),
        ("cached:   whole run, empty cache", f"{cached_e2e:.1f} s  (test/acc {cached_m['test/acc']:.3f}; includes extraction)"),
        ("cached:   whole run, warm cache (a later sweep job)", f"{warm_e2e:.1f} s"),
        ("logistic: 45-value L-BFGS path + refit, warm cache",
         f"solve {logistic_m['time/solve_s']:.1f} s, whole run {logistic_e2e:.1f} s, "
         f"l2={logistic_m['logistic/l2']:.3g}, test/acc {logistic_m['test/acc']:.3f}"),
        ("logistic: 45-value path, Pets-sized features (2940+740 x 2048, 37 classes)",
         f"{pets_s:.1f} s ({pets_iters} L-BFGS iterations, CPU)"),
    ]
    report(
        "Linear probe: cached vs uncached features",
        rows,
        [
            ("uncached / cached time/fit_s (fit only, extraction included)", plain_m["time/fit_s"] / cached_m["time/fit_s"],
             "for information"),
            ("uncached / cached time per epoch (epochs 2+)", per_epoch_plain / per_epoch_cached, "target >= 20"),
            (f"uncached / cached time, {args.epochs}-epoch run end to end", plain_e2e / cached_e2e, "target >= 10"),
        ],
    )


if __name__ == "__main__":
    main()
