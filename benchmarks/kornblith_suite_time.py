"""How long the kornblith_suite logistic column takes: feature extraction + the L2 path, per dataset.

    python benchmarks/kornblith_suite_time.py [--input-size 64] [--num-l2 45] [--gpu-img-s N]
        [--gpu-forward-img-s 13726] [--gpu-host-workers 15]

Measured here: one small backbone's (resnet18, random weights: the speed does not depend on
them) extraction throughput on this CPU at ``--input-size``, and the L-BFGS path's time on
synthetic features of a reference size. Estimated from those: each dataset of the suite
(train+val and test images, classes: the official splits) needs its images extracted once and
one path (solve time scaled by images x classes x feature size from the reference; the number
of iterations per value is taken as equal, a simplification).

The GPU estimate: extraction on a GPU runs at the slower of the backbone's forward pass and the
host's JPEG decoding. Decoding (decode + resize + centre-crop of 300-500 px JPEGs, one core) is
measured here and multiplied by ``--gpu-host-workers`` loader processes; the forward pass is
``--gpu-forward-img-s``, by default timm's published inference figure for resnet18 at 224 px
(RTX 4090, AMP, batch 1024: 13,726 img/s; huggingface/pytorch-image-models,
results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv; resnet50 at 224 px: 4,303). ``--gpu-img-s``
replaces both with a measured end-to-end extraction throughput (``benchmarks/gpu.py``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch
from PIL import Image

from benchmarks._common import WORKSPACE, report, set_threads
from benchmarks.logistic_vs_sklearn import features
from tlresearch.data.generate import generate_folder
from tlresearch.data.transforms import Preprocessing, eval_transform
from tlresearch.finetune.logistic import LogisticProbe
from tlresearch.models.backbones import create_backbone
from tlresearch.protocols.logistic_solver import regularization_path

#: (train+val images, test images, classes) of the suite's datasets (official splits; SUN397:
#: Kornblith et al.'s first split; Caltech-101: 30 training images per class).
SUITE = {"food101": (75750, 25250, 101), "cifar10": (50000, 10000, 10), "cifar100": (50000, 10000, 100),
         "sun397": (19850, 19850, 397), "stanford_cars": (8144, 8041, 196), "fgvc_aircraft": (6667, 3333, 100),
         "dtd": (3760, 1880, 47), "pets": (3680, 3669, 37), "caltech101": (3060, 6084, 102), "flowers102": (2040, 6149, 102)}
#: timm's published forward throughput of resnet18 at 224 px, RTX 4090, AMP, batch 1024 (see the docstring).
TIMM_RESNET18_4090_IMG_S = 13726.0


def extraction_img_s(input_size: int, batch: int = 32, batches: int = 4) -> tuple[float, int]:
    backbone = create_backbone("resnet18", weights=None, input_size=input_size).eval()
    images = torch.randn(batch, 3, input_size, input_size)
    with torch.no_grad():
        backbone(images)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            backbone(images)
    return batch * batches / (time.perf_counter() - start), backbone.num_features


def decode_img_s(images: int = 96) -> float:
    """One core's rate of what a loader worker does per image before the GPU: open a 300-500 px
    JPEG, decode, resize, centre-crop to 224 px, normalise."""
    root = WORKSPACE / "decode"
    generate_folder(root, classes=2, images_per_class=images // 2, layout="flat", min_size=300, max_size=500, seed=0)
    files = sorted(root.rglob("*.jpg"))
    transform = eval_transform(Preprocessing())
    for path in files[:4]:  # warm-up
        transform(Image.open(path))
    start = time.perf_counter()
    for path in files:
        transform(Image.open(path))
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--num-l2", type=int, default=45)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-img-s", type=float, default=None, help="measured end-to-end GPU extraction img/s (benchmarks/gpu.py)")
    parser.add_argument("--gpu-forward-img-s", type=float, default=TIMM_RESNET18_4090_IMG_S,
                        help="the backbone's forward img/s on the GPU (default: timm's published resnet18 figure, RTX 4090)")
    parser.add_argument("--gpu-host-workers", type=int, default=15, help="loader processes decoding JPEGs for the GPU")
    args = parser.parse_args()
    set_threads(args.threads)
    img_s, dim = extraction_img_s(args.input_size)
    decode = decode_img_s()
    cpu_img_s = min(img_s, decode)  # one loader worker decodes on the second core while the first runs the backbone
    gpu_img_s = args.gpu_img_s or min(args.gpu_forward_img_s, decode * args.gpu_host_workers)
    n0, c0 = 1000, 37
    data = features(n0, dim, c0)
    probe = LogisticProbe(num_l2=args.num_l2)
    start = time.perf_counter()
    regularization_path(data["train"], data["val"], c0, list(probe.l2_path()), max_iter=probe.max_iter,
                        tolerance=probe.tolerance, history_size=probe.history_size)
    solve0 = time.perf_counter() - start
    rows, cpu_total, gpu_total = [], 0.0, 0.0
    for name, (trainval, test, classes) in SUITE.items():
        extract = (trainval + test) / cpu_img_s
        solve = solve0 * (trainval * classes) / (n0 * c0)
        cpu_total += extract + solve
        gpu = (trainval + test) / gpu_img_s + solve
        gpu_total += gpu
        rows.append((name, f"extract {extract / 60:7.1f} min, solve {solve / 60:7.1f} min (CPU); GPU {gpu / 60:.1f} min"))
    rows.append(("measured", f"resnet18 at {args.input_size} px: {img_s:.0f} img/s; path of {args.num_l2} values on "
                             f"{n0} x {dim}, {c0} classes: {solve0:.1f} s"))
    rows.append(("decoding", f"{decode:.0f} img/s on one core (300-500 px JPEG -> 224 px tensor), measured"))
    source = ("measured (--gpu-img-s)" if args.gpu_img_s else
              f"min(forward {args.gpu_forward_img_s:.0f}, decoding {decode:.0f} x {args.gpu_host_workers} workers)")
    rows.append(("CPU total", f"{cpu_total / 3600:.2f} h (estimate: extraction at {cpu_img_s:.0f} img/s = min(forward, decoding))"))
    rows.append(("GPU total", f"{gpu_total / 3600:.2f} h (estimate: extraction at {gpu_img_s:.0f} img/s = {source}; "
                              "solves as on the CPU)"))
    report("kornblith_suite logistic column, one backbone", rows, [("CPU / GPU time", cpu_total / gpu_total, "estimate")])


if __name__ == "__main__":
    main()
