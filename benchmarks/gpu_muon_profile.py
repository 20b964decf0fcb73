"""How much of a speedrun-muon step the optimizer costs (issue 21, point 4: goal < 15% at batch 2000).

    python benchmarks/gpu_muon_profile.py --npz DECODED.npz [--device cuda] [--precision bf16]
                                          [--batch-size 2000] [--steps 20] --out muon-profile.json

Two measurements on the same backend, after ``--warmup`` steps (compile, cuDNN autotune):

1. clocks: N whole ``train_step`` calls, synchronised, against N ``optimizer.step()`` calls alone on the
   gradients the last step left (the Muon + SGD update, nothing else): share = optimizer / step;
2. torch.profiler over N steps (CPU + CUDA activities): the device time of the ``Optimizer.step``
   ranges against all device time, and the top kernels (written to ``--out`` next to the JSON, .txt).

``--compile-ns`` wraps the Newton-Schulz call in torch.compile (what ``--compile`` gives on CUDA).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", help="decoded npz (x_train, ...); default: synthetic data")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile-ns", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from cifarbench.config import build_config
    from cifarbench.engine.trainer import Trainer

    n_images = args.batch_size * (args.warmup + 2 * args.steps + 1)
    data = f"npz:{args.npz}" if args.npz else "synthetic"
    cfg = build_config("speedrun-muon", {"dataset": data, "backend": "torch", "device": args.device,
                                         "precision": args.precision, "batch_size": args.batch_size,
                                         "compile": bool(args.compile_ns)})
    tr = Trainer(cfg, write=False)
    tr.setup()
    be = tr.backend
    n = len(tr.splits.y_train)
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-n_images // n))])[:n_images]
    be.begin_epoch(order, None, None, 0)
    bs, k = args.batch_size, 0
    lr, mom = tr.schedule(0)

    def step():
        nonlocal k
        be.train_step(k * bs, (k + 1) * bs, lr, mom)
        k += 1

    for _ in range(args.warmup):
        step()
    be.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    be.synchronize()
    step_s = (time.perf_counter() - t0) / args.steps
    opt = be._optimizer
    t0 = time.perf_counter()
    for _ in range(args.steps):
        opt.step()
    be.synchronize()
    opt_s = (time.perf_counter() - t0) / args.steps

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(args.steps):
            step()
        be.synchronize()
    events = prof.key_averages()

    def dev(e):  # device time (CUDA) or CPU time where there is no device
        for attr in ("device_time_total", "cuda_time_total"):
            if args.device == "cuda" and hasattr(e, attr):
                return float(getattr(e, attr))
        return float(e.cpu_time_total)

    def self_dev(e):
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if args.device == "cuda" and hasattr(e, attr):
                return float(getattr(e, attr))
        return float(e.self_cpu_time_total)

    total = sum(self_dev(e) for e in events)
    opt_prof = sum(dev(e) for e in events if e.key.startswith("Optimizer.step"))
    table = events.table(sort_by="self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total",
                         row_limit=25)
    out = Path(args.out)
    out.with_suffix(".txt").write_text(table)
    result = {
        "recipe": "speedrun-muon", "device": args.device, "device_name": be.describe(), "precision": args.precision,
        "batch_size": bs, "steps": args.steps, "compile_ns": bool(args.compile_ns),
        "ns_dtype": str(getattr(opt, "ns_dtype", "")),
        "step_ms": 1e3 * step_s, "optimizer_ms": 1e3 * opt_s, "optimizer_share_clock": opt_s / step_s,
        "optimizer_share_profiler": opt_prof / total if total else None, "goal_share": 0.15,
    }
    result["goal_met"] = result["optimizer_share_clock"] < 0.15
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
