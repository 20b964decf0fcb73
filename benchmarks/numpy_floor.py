"""Where a NumPy-backend train step's time goes, next to torch's whole step: the GEMM floor.

    python benchmarks/numpy_floor.py [--cases cnn:64 resnet20:128] [--threads 1] [--steps 6]

For each case (built as ``numpy_vs_torch.py`` builds its SGD cases) it times ``--steps`` NumPy
train steps (after two warm-up steps) with every GEMM of the convolutions and every im2col
gather clocked (the clocks cost about 1 us a call), then the same steps on the torch CPU
backend, in another process. It prints

    gemm     the convolutions' GEMMs alone (BLAS time: what no NumPy code can go below)
    gather   the im2col gathers (one strided copy each)
    bn       BatchNorm (with the ReLU fused into it), forward and backward
    rest     everything else: other ReLUs, residual adds, pooling, the loss, the optimizer, Python
    ceiling  torch's step / the GEMMs alone: the NumPy/torch ratio a step would reach if
             everything but its GEMMs took no time at all

The ceiling says what the im2col + BLAS design can reach on this CPU against the convolution
kernels torch uses here (oneDNN), whatever else is optimised. With ``--threads N`` the clocks of
the N conv threads add up; gemm and gather are then their sums divided by N (the wall time a
perfect split would take), bn is wall time, and rest is what is left of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from numpy_vs_torch import build_case  # beside this file: the same backends, weights, data and optimizer


def worker(kind: str, model: str, batch: int, threads: int, steps: int) -> dict:
    clocks = {"gemm": 0.0, "gather": 0.0, "bn": 0.0}
    if kind == "numpy":
        from cifarbench.backends.numpy_backend import conv

        def clocked(fn, what):
            def timed(*a, **k):
                t = time.perf_counter()
                out = fn(*a, **k)
                clocks[what] += time.perf_counter() - t
                return out

            return timed

        from cifarbench.backends.numpy_backend import norm

        # every conv GEMM goes through these two (their arguments, im2col included, are made before the clock starts)
        conv.im2col = clocked(conv.im2col, "gather")
        conv.matmul_rows = clocked(conv.matmul_rows, "gemm")
        conv.matmul_t_acc = clocked(conv.matmul_t_acc, "gemm")
        norm.batchnorm_train_forward = clocked(norm.batchnorm_train_forward, "bn")
        norm.batchnorm_backward = clocked(norm.batchnorm_backward, "bn")
    n = batch * (steps + 2)
    be, lr, mom, rng = build_case(kind, model, "sgd", threads, n)
    be.begin_epoch(rng.permutation(n), rng.integers(0, 9, (n, 2)), rng.random(n) < 0.5, 0)
    for i in range(2):
        be.train_step(i * batch, (i + 1) * batch, lr, mom)
    be.synchronize()
    clocks.update(gemm=0.0, gather=0.0, bn=0.0)
    t0 = time.perf_counter()
    for i in range(2, steps + 2):
        be.train_step(i * batch, (i + 1) * batch, lr, mom)
    be.synchronize()
    step = (time.perf_counter() - t0) / steps
    # gemm and gather are clocked inside the lanes (summed over the threads), BatchNorm around its lanes (wall time)
    return {"step_s": step, "gemm_s": clocks["gemm"] / steps / threads, "gather_s": clocks["gather"] / steps / threads,
            "bn_s": clocks["bn"] / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["cnn:64", "resnet20:128"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, model, batch, threads, steps = args.worker
        print(json.dumps(worker(kind, model, int(batch), int(threads), int(steps))))
        return
    import platform

    import numpy
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"# {cpu}; {os.cpu_count()} CPUs; numpy {numpy.__version__}; torch {torch.__version__}; "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':>14} {'numpy ms':>9} {'gemm':>7} {'gather':>7} {'bn':>7} {'rest':>7} {'torch ms':>9} "
          f"{'numpy/torch':>11} {'ceiling':>8}")
    for case in args.cases:
        model, batch = case.split(":")
        res = {}
        for kind in ("numpy", "torch"):
            out = subprocess.run([sys.executable, __file__, "--worker", kind, model, batch, str(args.threads),
                                  str(args.steps)], capture_output=True, text=True, check=True)
            res[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        n, t = res["numpy"], res["torch"]
        rest = n["step_s"] - n["gemm_s"] - n["gather_s"] - n["bn_s"]
        print(f"{model + ' b' + batch:>14} {n['step_s'] * 1e3:9.1f} {n['gemm_s'] * 1e3:7.1f} {n['gather_s'] * 1e3:7.1f} "
              f"{n['bn_s'] * 1e3:7.1f} {rest * 1e3:7.1f} {t['step_s'] * 1e3:9.1f} {t['step_s'] / n['step_s']:11.2f} "
              f"{t['step_s'] / n['gemm_s']:8.2f}")
    print(f"# load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
