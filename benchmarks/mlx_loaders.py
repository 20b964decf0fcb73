"""Images/s of the MLX backend's two input pipelines, without a model.

memory:   uint8 split on the device once; per batch one gather (crop + flip) and normalise.
mlx-data: Buffer permuted by the epoch order -> random crop -> h-flip -> batch -> ordered
          prefetch in threads; then upload and normalise.

Each loader runs one warm-up epoch, then ``--repeats`` timed epochs (mx.eval of every batch
inside the timed region); prints min/median/max images/s.

    python benchmarks/mlx_loaders.py --n 4096 --batch-size 128 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx.core as mx
import numpy as np

from cifarbench.backends.mlx_backend.data import DeviceSplit, MLXDataLoader, gather_batch, normalise


def memory_epoch(split, order, offsets, flips, bs, mean, std):
    order, offsets, flips = mx.array(order.astype(np.int32)), mx.array(offsets.astype(np.int32)), mx.array(flips)
    for s in range(0, split.n, bs):
        x = normalise(gather_batch(split, order[s : s + bs], offsets[s : s + bs], flips[s : s + bs]), mean, std)
        mx.eval(x)


def mlxdata_epoch(loader, order, seed, bs, mean, std):
    loader.begin_epoch(order, seed)
    for s in range(0, len(order), bs):
        images, _ = loader.next_batch(s, min(s + bs, len(order)))
        mx.eval(normalise(mx.array(images), mean, std))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--pad", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="mlx-data prefetch threads")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = ap.parse_args()
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, args.size, args.size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.n)
    mean, std = mx.array([0.49, 0.48, 0.45]), mx.array([0.25, 0.24, 0.26])
    split = DeviceSplit(x, y, args.pad)
    loader = MLXDataLoader(x, y, args.pad, True, prefetch=4, threads=args.threads)
    runs = {
        "memory": lambda o, e: memory_epoch(
            split, o, rng.integers(0, 2 * args.pad + 1, (args.n, 2)), rng.random(args.n) < 0.5, args.batch_size, mean, std
        ),
        "mlx-data": lambda o, e: mlxdata_epoch(loader, o, e, args.batch_size, mean, std),
    }
    print(f"{args.n} images {args.size}x{args.size}, batch {args.batch_size}, pad {args.pad}, device {args.device}")
    for name, run in runs.items():
        run(rng.permutation(args.n), 0)  # warm-up
        rates = []
        for epoch in range(1, args.repeats + 1):
            order = rng.permutation(args.n)
            t0 = time.perf_counter()
            run(order, epoch)
            mx.synchronize()
            rates.append(args.n / (time.perf_counter() - t0))
        print(f"{name:9s} images/s  min {min(rates):10.0f}  median {statistics.median(rates):10.0f}  max {max(rates):10.0f}")


if __name__ == "__main__":
    main()
