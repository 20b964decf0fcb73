"""cProfile of NumPy-backend train steps: the functions that take the time, by own time.

    python benchmarks/numpy_profile.py [--model resnet20] [--batch 128] [--opt adamw] [--steps 3] [--top 15]

One BLAS thread, synthetic 32x32 data with crop + flip, two untimed warm-up steps first. Run it with
``PYTHONPATH=/path/to/an/old/checkout`` to profile another version of the backend.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import numpy as np

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.backends.numpy_backend import NumpyBackend
from cifarbench.models import create_spec, init_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--opt", default="adamw", choices=["sgd", "adamw"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    be = NumpyBackend("cpu", TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3, label_smoothing=0.1, crop_pad=4,
                                          flip=True, extra={"threads": 1}))
    spec = create_spec(args.model)
    be.build(spec, init_params(spec, 0))
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4) if args.opt == "sgd"
                           else OptimConfig("adamw", weight_decay=5e-2))
    rng = np.random.default_rng(0)
    b, n = args.batch, args.batch * (args.steps + 2)
    be.set_data("train", rng.integers(0, 256, (n, 32, 32, 3), np.uint8), rng.integers(0, 10, n))
    be.begin_epoch(rng.permutation(n), rng.integers(0, 9, (n, 2)), rng.random(n) < 0.5, 0)
    for i in range(2):
        be.train_step(i * b, (i + 1) * b, 0.05, 0.9)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for i in range(2, args.steps + 2):
        be.train_step(i * b, (i + 1) * b, 0.05, 0.9)
    prof.disable()
    print(f"{args.model} b{b} {args.opt}: {(time.perf_counter() - t0) / args.steps:.3f} s/step under cProfile; "
          f"load average {os.getloadavg()[0]:.2f}")
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
