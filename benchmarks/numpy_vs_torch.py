"""Train-step throughput of the NumPy backend next to the PyTorch CPU backend: interleaved A/B pairs.

    python benchmarks/numpy_vs_torch.py                       # the full table, ~6-8 min on 2 cores

    options: --cases cnn:64 resnet20:128  --opts sgd adamw  --threads 1 2  --repeats 5  --seconds 1.5
             --baseline /path/to/an/old/checkout   (adds a column: that checkout's NumPy backend, same pairs)

Every (model, batch, optimizer, threads) case starts one worker process per backend (so the
two BLAS/OpenMP thread pools never share a process), builds the same model from the same
weights, feeds the same synthetic uint8 data with crop 4 + flip and label smoothing 0.1, and
runs warm-up steps. Then it times ``--repeats`` windows of whole train steps per backend,
alternating the order (A B, B A, ...) so that a change of machine load hits both sides of a
pair alike; each pair gives one NumPy/torch ratio. The table gives each side's median
images/s, the median of the pair ratios and their range (min-max). SGD is nesterov momentum
0.9 with weight decay 5e-4; AdamW is lr 1e-3, weight decay 5e-2.

The machine's load average is printed before and after: other processes on these cores make
every figure noisy, the pair ratios less so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
WARMUP_STEPS = 3


# ----- worker: one backend, driven by lines on stdin ------------------------------------------


def build_case(kind: str, model: str, opt: str, threads: int, n: int):
    """(backend, lr, momentum, rng): ``kind`` ("numpy" or "torch") built with ``model``'s seed-0
    weights and ``opt`` ("sgd" or "adamw"), holding ``n`` synthetic uint8 training images."""
    import numpy as np

    from cifarbench.backends.base import OptimConfig, TrainOptions
    from cifarbench.models import create_spec, init_params

    options = TrainOptions(mean=CIFAR_MEAN, std=CIFAR_STD, label_smoothing=0.1, crop_pad=4, flip=True,
                           extra={"threads": threads})
    if kind == "torch":
        from cifarbench.backends.torch_backend import TorchBackend

        be = TorchBackend("cpu", options)
    else:
        from cifarbench.backends.numpy_backend import NumpyBackend

        be = NumpyBackend("cpu", options)
    spec = create_spec(model)
    be.build(spec, init_params(spec, 0))
    if opt == "sgd":
        config, lr, mom = OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4), 0.05, 0.9
    else:
        config, lr, mom = OptimConfig("adamw", weight_decay=5e-2), 1e-3, 0.9
    be.configure_optimizer(config)
    rng = np.random.default_rng(0)
    be.set_data("train", rng.integers(0, 256, (n, spec.image_size, spec.image_size, spec.in_channels), np.uint8),
                rng.integers(0, spec.num_classes, n).astype(np.int64))
    return be, lr, mom, rng


def worker(kind: str, cfg: dict) -> None:
    batch = cfg["batch"]
    n = batch * 16
    be, lr, mom, rng = build_case(kind, cfg["model"], cfg["opt"], cfg["threads"], n)
    pos = [n]

    def steps(k: int) -> None:
        for _ in range(k):
            if pos[0] + batch > n:
                be.begin_epoch(rng.permutation(n), rng.integers(0, 9, (n, 2)), rng.random(n) < 0.5, 0)
                pos[0] = 0
            be.train_step(pos[0], pos[0] + batch, lr, mom)
            pos[0] += batch
        be.synchronize()

    steps(WARMUP_STEPS - 1)
    t0 = time.perf_counter()
    steps(1)
    per_step = time.perf_counter() - t0
    k = max(1, round(cfg["seconds"] / per_step))
    print(json.dumps({"ready": be.describe(), "steps": k}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        steps(k)
        print(json.dumps({"rate": batch * k / (time.perf_counter() - t0)}), flush=True)


class Worker:
    def __init__(self, kind: str, cfg: dict, path: str | None = None):
        env = dict(os.environ)
        # one thread each for the pools we do not set, so no pool oversubscribes the cores
        env.update(OMP_NUM_THREADS=str(cfg["threads"]), OPENBLAS_NUM_THREADS=str(cfg["threads"]),
                   MKL_NUM_THREADS=str(cfg["threads"]))
        if path:
            env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(cfg)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"worker failed (exit {self.p.wait()})")
        return json.loads(line)

    def window(self) -> float:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return self._read()["rate"]

    def close(self, kill: bool = False) -> None:
        if kill:  # interrupted: do not wait for a window or a warm-up to finish
            self.p.kill()
        else:
            self.p.stdin.close()
        self.p.wait()


# ----- driver --------------------------------------------------------------------------------


def run_case(model: str, batch: int, opt: str, threads: int, repeats: int, seconds: float,
             baseline: str | None) -> dict:
    cfg = {"model": model, "batch": batch, "opt": opt, "threads": threads, "seconds": seconds}
    kinds = {"numpy": None, "torch": None}
    if baseline:
        kinds["base"] = baseline
    workers = {k: Worker("torch" if k == "torch" else "numpy", cfg, path) for k, path in kinds.items()}
    rates: dict[str, list[float]] = {k: [] for k in workers}
    order = list(workers)
    done = False
    try:
        for r in range(repeats):
            for k in (order if r % 2 == 0 else order[::-1]):
                rates[k].append(workers[k].window())
        done = True
    finally:
        for w in workers.values():
            w.close(kill=not done)
    out = {"rates": rates, "ratio": [a / b for a, b in zip(rates["numpy"], rates["torch"])]}
    if baseline:
        out["base_ratio"] = [a / b for a, b in zip(rates["base"], rates["torch"])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["cnn:64", "resnet20:128"], help="model:batch")
    ap.add_argument("--opts", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5, help="A/B pairs per case")
    ap.add_argument("--seconds", type=float, default=1.5, help="length of one timed window")
    ap.add_argument("--baseline", default=None, help="a directory holding another cifarbench package to compare")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return

    import numpy as np
    import torch

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the workers are stopped too
    t_start = time.perf_counter()
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"{cpu}; {os.cpu_count()} CPUs; numpy {np.__version__}; torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{args.repeats} interleaved pairs of ~{args.seconds:g} s windows per case; images/s = median over windows")
    head = f"{'model':>9} {'batch':>5} {'opt':>5} {'thr':>3}  {'numpy img/s':>11} {'torch img/s':>11}  {'numpy/torch median (range)':>27}"
    if args.baseline:
        head += f"  {'baseline/torch median (range)':>30}"
    print(head)
    for threads in args.threads:
        for case in args.cases:
            model, batch = case.split(":")
            for opt in args.opts:
                res = run_case(model, int(batch), opt, threads, args.repeats, args.seconds, args.baseline)
                med = {k: statistics.median(v) for k, v in res["rates"].items()}
                r = res["ratio"]
                line = (f"{model:>9} {batch:>5} {opt:>5} {threads:>3}  {med['numpy']:11.1f} {med['torch']:11.1f}  "
                        f"{statistics.median(r):>12.2f} ({min(r):.2f}-{max(r):.2f})")
                if args.baseline:
                    b = res["base_ratio"]
                    line += f"  {statistics.median(b):>15.2f} ({min(b):.2f}-{max(b):.2f})"
                print(line, flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"run took {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
