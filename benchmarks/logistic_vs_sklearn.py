"""Our L-BFGS logistic path vs scikit-learn's LogisticRegression (lbfgs, multinomial), side by side.

    python benchmarks/logistic_vs_sklearn.py [--num-l2 45] [--train 2940] [--dim 2048] [--threads 1]

The same features (synthetic, shaped like ResNet-50 features of Oxford-IIIT Pet: 37 classes,
2940 train / 740 val / 740 test), the same regularisation grid (``finetune=logistic``'s 45
log-spaced values in [1e-6, 1e5], strongest first; scikit-learn's ``C = 1 / (l2 * n_train)``),
both warm-started along the path (scikit-learn: ``warm_start=True``) and both choosing the value by
validation accuracy. Ours at the suite's settings (``finetune.tolerance``, history 20; ``--tolerance``
to change it), scikit-learn at its defaults (tol 1e-4 on the same objective's gradient, max_iter 1000).
Printed: the path's time, the chosen value's test accuracy, and the time ratio.
Target: ours <= 0.5x scikit-learn's time at equal test accuracy (within 0.5 points).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from benchmarks._common import report, set_threads
from tlresearch.finetune.logistic import LogisticProbe
from tlresearch.protocols.logistic_solver import regularization_path, score


def features(n_train: int, dim: int, classes: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=gen)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        return (0.15 * centres[y] + torch.randn(n, dim, generator=gen)).relu(), y

    return {"train": split(n_train), "val": split(n_train // 4), "test": split(n_train // 4)}


def ours(data: dict, classes: int, l2_values: list[float], probe: LogisticProbe) -> tuple[float, float, int]:
    start = time.perf_counter()
    path = regularization_path(data["train"], data["val"], classes, l2_values, max_iter=probe.max_iter,
                               tolerance=probe.tolerance, history_size=probe.history_size)
    seconds = time.perf_counter() - start
    test = score(path.best, *data["test"], classes, "test")["test/acc"]
    return seconds, test, sum(int(p["iterations"]) for p in path.points)


def sklearn_path(data: dict, l2_values: list[float]) -> tuple[float, float]:
    (xt, yt), (xv, yv), (xs, ys) = ((x.double().numpy(), y.numpy()) for x, y in (data["train"], data["val"], data["test"]))
    model = LogisticRegression(solver="lbfgs", max_iter=1000, warm_start=True)
    best, best_acc = None, -1.0
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for l2 in l2_values:
            model.set_params(C=1.0 / (l2 * len(yt)))
            model.fit(xt, yt)
            acc = float((model.predict(xv) == yv).mean())
            if acc > best_acc:
                best_acc, best = acc, (model.coef_.copy(), model.intercept_.copy())
    seconds = time.perf_counter() - start
    coef, intercept = best
    test = float((np.argmax(xs @ coef.T + intercept, axis=1) == ys).mean())
    return seconds, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-l2", type=int, default=45)
    parser.add_argument("--train", type=int, default=2940)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=37)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (0: default)")
    parser.add_argument("--tolerance", type=float, default=None, help="ours: finetune.tolerance (default: the config's)")
    args = parser.parse_args()
    set_threads(args.threads)
    data = features(args.train, args.dim, args.classes)
    probe = LogisticProbe(num_l2=args.num_l2, **({"tolerance": args.tolerance} if args.tolerance else {}))
    l2_values = list(probe.l2_path())
    ours_s, ours_acc, iterations = ours(data, args.classes, l2_values, probe)
    sk_s, sk_acc = sklearn_path(data, l2_values)
    report(f"logistic path, {len(l2_values)} values, {args.train} x {args.dim}, {args.classes} classes", [
        (f"ours (torch L-BFGS, float32, tolerance {probe.tolerance:g})",
         f"{ours_s:.2f} s, test acc {100 * ours_acc:.1f}%, {iterations} iterations"),
        ("scikit-learn (lbfgs, float64)", f"{sk_s:.2f} s, test acc {100 * sk_acc:.1f}%"),
    ], [("ours / scikit-learn time", ours_s / sk_s, f"target <= 0.5x; test acc difference {100 * (ours_acc - sk_acc):+.1f} points")])


if __name__ == "__main__":
    main()
