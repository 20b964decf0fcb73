"""speedrun-muon vs speedrun on a cifar10-jpeg subset, on this CPU (issue 21, point 3).

    python ../shared/tools/cifar10_jpeg.py /tmp/c10 --npz           # decode once (never commit it)
    python benchmarks/speedrun_muon_cpu.py /tmp/c10/cifar10-jpeg-decoded.npz --train 5000 --epochs 2 --seeds 0 1 2

Both recipes train on the same first ``--train`` training images (class-balanced: the first
train/10 of each class, in the official order) for the same epochs, and are tested on the first
``--test`` test images, each as its YAML says (batch, schedule, TTA) unless overridden with
``--set key=value``. The subset is written to a temporary directory and removed afterwards.
Prints one line per run and the mean +- std test accuracy per recipe.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def subset(src: Path, dst: Path, n_train: int, n_test: int) -> Path:
    z = np.load(src)
    y = z["y_train"]
    per = n_train // 10
    idx = np.sort(np.concatenate([np.flatnonzero(y == c)[:per] for c in range(10)]))
    np.savez(dst, x_train=z["x_train"][idx], y_train=y[idx].astype(np.int64), x_test=z["x_test"][:n_test],
             y_test=z["y_test"][:n_test].astype(np.int64), class_names=z["class_names"])
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", type=Path, help="decoded cifar10-jpeg (cifar10_jpeg.py --npz)")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--recipes", nargs="+", default=["speedrun-muon", "speedrun"])
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--set", action="append", default=[], help="key=value override for every recipe (YAML value)")
    args = ap.parse_args(argv)

    import yaml

    from cifarbench.config import build_config
    from cifarbench.engine.trainer import Trainer

    extra = {k.replace("-", "_"): yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.npz, Path(tmp) / "subset.npz", args.train, args.test)
        results: dict[str, list[float]] = {r: [] for r in args.recipes}
        for seed in args.seeds:
            for recipe in args.recipes:
                cfg = build_config(recipe, {"dataset": f"npz:{data}", "backend": args.backend, "device": "cpu",
                                            "epochs": args.epochs, "seed": seed, **extra})
                t0 = time.perf_counter()
                s = Trainer(cfg, write=False).run()
                acc = s.test_accuracy
                results[recipe].append(acc)
                print(f"{recipe:14s} seed {seed}: test acc {acc:.4f}  ({s.steps_per_epoch} steps/epoch x "
                      f"{cfg.epochs}, batch {cfg.batch_size}, {time.perf_counter() - t0:.0f} s, "
                      f"load {os.getloadavg()[0]:.1f})", flush=True)
    for recipe, accs in results.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{recipe:14s}: {100 * statistics.mean(accs):.2f} +- {100 * sd:.2f} % over {len(accs)} seeds")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
