"""Train-step throughput of the NumPy backend next to the PyTorch CPU backend, in one run.

    python benchmarks/numpy_vs_torch.py [--model cnn] [--batch-sizes 64 128] [--windows 5] [--steps 8]

Both backends get the same model, weights, data, augmentation draws and optimizer (SGD,
nesterov momentum, weight decay; crop 4 + flip, as the CIFAR recipes). Warm-up steps are run
and excluded; then several timed windows of whole steps (synchronised before each clock
read); the table gives the median images/s with the min-max range, and the NumPy/PyTorch
ratio. Both backends run in turn in the same process, on the same cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.models import create_spec, init_params

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def make_backend(kind: str, options: TrainOptions):
    if kind.startswith("numpy"):
        from cifarbench.backends.numpy_backend import NumpyBackend

        return NumpyBackend("cpu", options)
    from cifarbench.backends.torch_backend import TorchBackend

    return TorchBackend("cpu", options)


def measure(kind: str, model: str, batch: int, windows: int, steps: int, warmup: int, threads: int | None) -> list[float]:
    """images/s of each timed window."""
    seed = 0
    spec = create_spec(model)
    extra = {"threads": threads} if threads and kind.startswith("numpy") else {}
    options = TrainOptions(mean=CIFAR_MEAN, std=CIFAR_STD, label_smoothing=0.1, crop_pad=4, flip=True, extra=extra)
    be = make_backend(kind, options)
    be.build(spec, init_params(spec, seed))
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4))
    rng = np.random.default_rng(seed)
    n = batch * (warmup + windows * steps)
    x = rng.integers(0, 256, (n, spec.image_size, spec.image_size, spec.in_channels), dtype=np.uint8)
    y = rng.integers(0, spec.num_classes, n).astype(np.int64)
    be.set_data("train", x, y)
    be.begin_epoch(rng.permutation(n), rng.integers(0, 9, (n, 2)), rng.random(n) < 0.5, seed)
    pos = 0
    for _ in range(warmup):
        be.train_step(pos, pos + batch, 0.05, 0.9)
        pos += batch
    be.synchronize()
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            be.train_step(pos, pos + batch, 0.05, 0.9)
            pos += batch
        be.synchronize()
        rates.append(batch * steps / (time.perf_counter() - t0))
    be.end_epoch()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--windows", type=int, default=5, help="timed windows per backend and batch size")
    ap.add_argument("--steps", type=int, default=8, help="train steps per timed window")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--numpy-threads", type=int, default=None, help="OpenBLAS threads for NumPy (default: its own, all cores)")
    args = ap.parse_args()

    import torch

    from cifarbench.backends.numpy_backend.arrays import blas_threads

    print(f"model {args.model}; {os.cpu_count()} CPUs; OpenBLAS threads {args.numpy_threads or blas_threads()}; load average {os.getloadavg()[0]:.2f}; "
          f"numpy {np.__version__}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{'batch':>5}  {'numpy img/s (min-max)':>24}  {'torch img/s (min-max)':>24}  {'numpy/torch':>11}")
    for batch in args.batch_sizes:
        res = {k: measure(k, args.model, batch, args.windows, args.steps, args.warmup, args.numpy_threads) for k in ("numpy", "torch")}
        med = {k: statistics.median(v) for k, v in res.items()}
        cells = [f"{med[k]:8.1f} ({min(v):7.1f}-{max(v):7.1f})" for k, v in res.items()]
        print(f"{batch:>5}  {cells[0]:>24}  {cells[1]:>24}  {med['numpy'] / med['torch']:>10.1%}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes on these cores skew both columns)")


if __name__ == "__main__":
    main()
