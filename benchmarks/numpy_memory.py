"""Peak memory of the NumPy backend training ResNet-18 at batch 128 (issue #4: "keep memory bounded").

    OMP_NUM_THREADS=1 python benchmarks/numpy_memory.py [--model resnet18] [--batch 128] [--steps 4]

Synthetic 32x32 data, SGD with nesterov momentum. After every step it reads the peak resident
set (``resource.getrusage(...).ru_maxrss``) and the current one (/proc/self/statm), so growth
from step to step shows; no tracemalloc (it slows NumPy down and misses BLAS buffers). Next to
them, what the step needs in theory: parameters + gradients + momentum, the activations a
backward pass must keep (every layer's output, float32), and the largest single im2col matrix.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.backends.numpy_backend import NumpyBackend
from cifarbench.models import create_spec, init_params
from cifarbench.models import spec as S
from cifarbench.models.shapes import input_shape, layer_shape

MB = 1 << 20


def peak_rss() -> int:
    """Peak resident set of this process so far, in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0  # not Linux: only the peak is reported


def activation_elements(layers, shape, counts: dict) -> tuple:
    """Walk the spec: per-sample elements of every layer output (what backward must keep), and
    the largest im2col matrix (k*k*C x Ho*Wo) per sample."""
    for layer in layers:
        if isinstance(layer, S.Group):
            shape = activation_elements(layer.layers, shape, counts)
        elif isinstance(layer, S.Residual):
            out = activation_elements(layer.body, shape, counts)
            if layer.shortcut:
                activation_elements(layer.shortcut, shape, counts)
            counts["acts"] += int(np.prod(out))  # the sum (and its ReLU)
            shape = out
        else:
            out = layer_shape(layer, shape)
            counts["acts"] += int(np.prod(out))
            if isinstance(layer, S.Conv):
                counts["cols"] = max(counts["cols"], layer.k * layer.k * layer.cin * out[1] * out[2])
            shape = out
    return shape


def theory(spec, batch: int) -> dict[str, float]:
    counts = {"acts": 0, "cols": 0}
    activation_elements(spec.layers, input_shape(spec), counts)
    params = spec.num_params() * 4
    return {
        "params+grads+momentum MB": 3 * params / MB,
        "activations (all layer outputs) MB": counts["acts"] * batch * 4 / MB,
        "largest im2col matrix MB": counts["cols"] * batch * 4 / MB,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()

    spec = create_spec(args.model, image_size=args.image_size)
    base = peak_rss()
    be = NumpyBackend("cpu", TrainOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    be.build(spec, init_params(spec, 0))
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4))
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    s, c = spec.image_size, spec.in_channels
    be.set_data("train", rng.integers(0, 256, (n, s, s, c), dtype=np.uint8), rng.integers(0, spec.num_classes, n))
    be.begin_epoch(np.arange(n), None, None, seed=0)
    print(f"{args.model} on numpy, batch {args.batch}, {s}x{s}; before the model: peak RSS {base / MB:.0f} MB")
    print(f"after build + data: peak RSS {peak_rss() / MB:.0f} MB, current {current_rss() / MB:.0f} MB")
    for i in range(args.steps):
        t0 = time.perf_counter()
        be.train_step(i * args.batch, (i + 1) * args.batch, lr=0.05, momentum=0.9)
        dt = time.perf_counter() - t0
        print(f"step {i + 1}: {dt:5.1f} s, peak RSS {peak_rss() / MB:6.0f} MB, current {current_rss() / MB:6.0f} MB")
    net = be.net
    print(f"kept im2col buffers: {net.cols_used / MB:.0f} MB (budget {net.cols_budget / MB:.0f} MB)")
    print(f"workspace buffers: {sum(a.nbytes for a in net.ws._flat.values()) / MB:.0f} MB")
    for k, v in theory(spec, args.batch).items():
        print(f"theory: {k:38s} {v:8.0f}")


if __name__ == "__main__":
    main()
