"""How long the kornblith_suite logistic column takes: feature extraction + the L2 path, per dataset.

    python benchmarks/kornblith_suite_time.py [--input-size 64] [--num-l2 45] [--gpu-img-s N]

Measured here: one small backbone's (resnet18, random weights: the speed does not depend on
them) extraction throughput on this CPU at ``--input-size``, and the L-BFGS path's time on
synthetic features of a reference size. Estimated from those: each dataset of the suite
(train+val and test images, classes: the official splits) needs its images extracted once and
one path (solve time scaled by images x classes x feature size from the reference; the number
of iterations per value is taken as equal, a simplification). ``--gpu-img-s``: a measured GPU
extraction throughput (``benchmarks/gpu.py``) to estimate the GPU time with the same solves.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch

from benchmarks._common import report, set_threads
from benchmarks.logistic_vs_sklearn import features
from tlresearch.finetune.logistic import LogisticProbe
from tlresearch.models.backbones import create_backbone
from tlresearch.protocols.logistic_solver import regularization_path

#: (train+val images, test images, classes) of the suite's datasets (official splits; SUN397:
#: Kornblith et al.'s first split; Caltech-101: 30 training images per class).
SUITE = {"food101": (75750, 25250, 101), "cifar10": (50000, 10000, 10), "cifar100": (50000, 10000, 100),
         "sun397": (19850, 19850, 397), "stanford_cars": (8144, 8041, 196), "fgvc_aircraft": (6667, 3333, 100),
         "dtd": (3760, 1880, 47), "pets": (3680, 3669, 37), "caltech101": (3060, 6084, 102), "flowers102": (2040, 6149, 102)}


def extraction_img_s(input_size: int, batch: int = 32, batches: int = 4) -> tuple[float, int]:
    backbone = create_backbone("resnet18", weights=None, input_size=input_size).eval()
    images = torch.randn(batch, 3, input_size, input_size)
    with torch.no_grad():
        backbone(images)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            backbone(images)
    return batch * batches / (time.perf_counter() - start), backbone.num_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--num-l2", type=int, default=45)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-img-s", type=float, default=None, help="measured GPU extraction img/s")
    args = parser.parse_args()
    set_threads(args.threads)
    img_s, dim = extraction_img_s(args.input_size)
    n0, c0 = 1000, 37
    data = features(n0, dim, c0)
    probe = LogisticProbe(num_l2=args.num_l2)
    start = time.perf_counter()
    regularization_path(data["train"], data["val"], c0, list(probe.l2_path()), max_iter=probe.max_iter,
                        tolerance=probe.tolerance, history_size=probe.history_size)
    solve0 = time.perf_counter() - start
    rows, cpu_total, gpu_total = [], 0.0, 0.0
    for name, (trainval, test, classes) in SUITE.items():
        extract = (trainval + test) / img_s
        solve = solve0 * (trainval * classes) / (n0 * c0)
        cpu_total += extract + solve
        gpu = (trainval + test) / args.gpu_img_s + solve if args.gpu_img_s else None
        gpu_total += gpu or 0.0
        rows.append((name, f"extract {extract / 60:7.1f} min, solve {solve / 60:7.1f} min (CPU)"
                     + (f"; GPU {gpu / 60:.1f} min" if gpu else "")))
    rows.append(("measured", f"resnet18 at {args.input_size} px: {img_s:.0f} img/s; path of {args.num_l2} values on "
                             f"{n0} x {dim}, {c0} classes: {solve0:.1f} s"))
    rows.append(("CPU total", f"{cpu_total / 3600:.2f} h (estimate)"))
    if args.gpu_img_s:
        rows.append(("GPU total", f"{gpu_total / 3600:.2f} h (estimate: extraction at {args.gpu_img_s:.0f} img/s, solves as on the CPU)"))
    report("kornblith_suite logistic column, one backbone", rows, [])


if __name__ == "__main__":
    main()
