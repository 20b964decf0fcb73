"""Do the per-phase times of ``Backend.phase_step`` add up to a fused ``train_step``? Interleaved pairs.

    python benchmarks/phase_split.py                          # numpy, torch, jax, mlx; lenet bs64; ~3 min on 2 cores
    options: --backends numpy torch  --model cnn  --batch 64  --pairs 30  --threads 1

Per backend: one model, one optimizer, synthetic uint8 data with crop 2 + flip; warm-up (both paths
compile: the fused step and the four phase functions); then ``--pairs`` pairs, each one fused step
(synchronised before and after, like bench's windows) and one phase-timed step, alternating which goes
first so a change of machine load hits both sides alike. Printed per backend: the median fused step,
the median phase sum, the median of the per-pair ratios sum/fused with its interquartile range (the
noise), and each phase's median share of the sum. Where the split runs the fused step's own code
(NumPy, eager torch) the ratio should be 1 within the IQR; where the fused step is compiled as a whole
(MLX ``mx.compile``, one ``jax.jit``) the split gives up that fusion, and the ratio says what it costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def run(name: str, model: str, bs: int, pairs: int, threads: int | None) -> dict | None:
    from cifarbench.backends import create_backend, load_backend_class
    from cifarbench.backends.base import STEP_PHASES, OptimConfig, TrainOptions
    from cifarbench.errors import CifarbenchError
    from cifarbench.models import create_spec, init_params

    try:
        if load_backend_class(name).probe().get("cpu") is not None:
            return None
        extra = {"threads": threads} if threads else {}
        b = create_backend(name, "cpu", TrainOptions((0.5,) * 3, (0.25,) * 3, crop_pad=2, flip=True, extra=extra), 0)
    except CifarbenchError as exc:
        print(f"{name}: skipped ({exc.message})")
        return None
    spec = create_spec(model, 3, 32, 10)
    b.build(spec, init_params(spec, 0))
    b.configure_optimizer(OptimConfig("sgd", 0.9, nesterov=True, weight_decay=5e-4))
    rng = np.random.default_rng(0)
    n = bs * 8
    b.set_data("train", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
    b.begin_epoch(rng.permutation(n), rng.integers(0, 5, (n, 2)), rng.integers(0, 2, n).astype(bool), 1)

    def fused(start: int) -> float:
        b.synchronize()
        t0 = time.perf_counter()
        b.train_step(start, start + bs, 0.01, 0.9)
        b.synchronize()
        return time.perf_counter() - t0

    for k in range(3):  # warm-up: compile both paths
        fused(k % 8 * bs)
        b.phase_step(k % 8 * bs, k % 8 * bs + bs, 0.01, 0.9)
    f, s, ratio, shares = [], [], [], {p: [] for p in STEP_PHASES}
    for k in range(pairs):
        start = k % 8 * bs
        if k % 2:
            t_f, t_p = fused(start), b.phase_step(start, start + bs, 0.01, 0.9)
        else:
            t_p, t_f = b.phase_step(start, start + bs, 0.01, 0.9), fused(start)
        total = sum(t_p.values())
        f.append(t_f)
        s.append(total)
        ratio.append(total / t_f)
        for p in STEP_PHASES:
            shares[p].append(t_p[p] / total)
    b.end_epoch()
    return {"backend": name, "fused_ms": 1e3 * statistics.median(f), "sum_ms": 1e3 * statistics.median(s),
            "ratio": _quartiles(ratio), "shares": {p: statistics.median(v) for p, v in shares.items()},
            "describe": b.describe()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["numpy", "torch", "jax", "mlx"])
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()}; {a.model} bs{a.batch}, {a.pairs} interleaved pairs, "
          f"threads {a.threads}")
    print(f"{'backend':8} {'fused ms':>9} {'sum ms':>9} {'sum/fused median [IQR]':>26}   shares (data/fwd/bwd/opt)")
    for name in a.backends:
        r = run(name, a.model, a.batch, a.pairs, a.threads)
        if r is None:
            continue
        q1, med, q3 = r["ratio"]
        shares = " / ".join(f"{100 * v:.0f}%" for v in r["shares"].values())
        print(f"{name:8} {r['fused_ms']:9.2f} {r['sum_ms']:9.2f} {med:10.3f} [{q1:.3f}, {q3:.3f}]      {shares}"
              f"   ({r['describe']})")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
