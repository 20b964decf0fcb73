"""Peak memory of training and evaluation, NumPy backend next to torch: one child process per case.

    python benchmarks/numpy_memory.py          # resnet18: train b128 + eval b1000, numpy and torch; ~3-5 min

    options: --model resnet18 --batch 128 --eval-batch 1000 --steps 3 --threads 1
             --baseline /path/to/an/old/checkout   (adds that checkout's NumPy backend as a case)

Each case runs in a fresh Python process, so its peak resident set (``ru_maxrss``) is that
case's alone. A child imports its backend, builds the model, takes ``--steps`` train steps
(SGD, nesterov momentum, weight decay; synthetic 32x32 data, crop + flip) or predicts
one batch of ``--eval-batch`` images, and reports the peak RSS before the model,
after the build and at the end, and the current RSS after every step (flat from step to
step: nothing grows). The peak includes the interpreter and the framework (torch's
libraries are large), so the "model" column subtracts the peak before the build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

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


def child(kind: str, phase: str, cfg: dict) -> None:
    import numpy as np

    from cifarbench.backends.base import OptimConfig, TrainOptions
    from cifarbench.models import create_spec, init_params

    options = TrainOptions(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), crop_pad=4, flip=True,
                           extra={"threads": cfg["threads"]})
    if kind == "torch":
        from cifarbench.backends.torch_backend import TorchBackend

        be = TorchBackend("cpu", options)
    else:
        from cifarbench.backends.numpy_backend import NumpyBackend

        be = NumpyBackend("cpu", options)
    spec = create_spec(cfg["model"])
    rng = np.random.default_rng(0)
    batch = cfg["batch"] if phase == "train" else cfg["eval_batch"]
    n = batch * (cfg["steps"] if phase == "train" else 1)
    x = rng.integers(0, 256, (n, spec.image_size, spec.image_size, spec.in_channels), dtype=np.uint8)
    y = rng.integers(0, spec.num_classes, n).astype(np.int64)
    before = peak_rss()
    be.build(spec, init_params(spec, 0))
    be.set_data(phase, x, y)
    built = peak_rss()
    steps = []
    if phase == "train":
        be.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4))
        be.begin_epoch(rng.permutation(n), rng.integers(0, 9, (n, 2)), rng.random(n) < 0.5, 0)
        for i in range(cfg["steps"]):
            t0 = time.perf_counter()
            be.train_step(i * batch, (i + 1) * batch, 0.05, 0.9)
            be.synchronize()
            steps.append((time.perf_counter() - t0, current_rss()))
        be.end_epoch()
    else:
        t0 = time.perf_counter()
        be.predict(phase, batch)
        steps.append((time.perf_counter() - t0, current_rss()))
    print(json.dumps({"before": before, "built": built, "peak": peak_rss(), "steps": steps}))


def run(kind: str, phase: str, cfg: dict, path: str | None) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(cfg["threads"]), OPENBLAS_NUM_THREADS=str(cfg["threads"]))
    if path:
        env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, phase, json.dumps(cfg)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{kind} {phase} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline", default=None, help="a directory holding another cifarbench package to compare")
    ap.add_argument("--phases", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    ap.add_argument("--backends", nargs="+", default=["numpy", "torch"], choices=["numpy", "torch"])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], json.loads(args.child[2]))
        return
    cfg = {"model": args.model, "batch": args.batch, "eval_batch": args.eval_batch, "steps": args.steps,
           "threads": args.threads}
    t_start = time.perf_counter()
    print(f"{args.model}, train batch {args.batch} ({args.steps} steps), eval batch {args.eval_batch}, "
          f"{args.threads} thread(s); load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'case':>22} {'peak RSS MB':>12} {'model MB':>9} {'s/step':>7}  current RSS after each step (MB)")
    cases = [(k, None) for k in args.backends] + ([("baseline numpy", args.baseline)] if args.baseline else [])
    for phase, b in (("train", args.batch), ("eval", args.eval_batch)):
        if phase not in args.phases:
            continue
        for name, path in cases:
            r = run("torch" if name == "torch" else "numpy", phase, cfg, path)
            secs = sorted(s for s, _ in r["steps"])[len(r["steps"]) // 2]
            cur = " ".join(f"{c / MB:.0f}" for _, c in r["steps"])
            print(f"{name + ' ' + phase + ' b' + str(b):>22} {r['peak'] / MB:12.0f} {(r['peak'] - r['before']) / MB:9.0f} "
                  f"{secs:7.2f}  {cur}", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; run took {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
