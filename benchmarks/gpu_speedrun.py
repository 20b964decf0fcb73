"""N speedrun trainings in one process after warm-up runs, timed the way airbench times its own.

    python benchmarks/gpu_speedrun.py --npz DECODED.npz [--runs 10] [--warmup-runs 1] [--device cuda]
                                      [--precision bf16] [--compile-mode default] --out speedrun.json

Each run is a fresh Trainer on the `speedrun` recipe (or ``--recipe speedrun-muon``) (seed = base + index; the warm-up runs come
first and are reported apart). Per run it records the trainer's own clocks:

- ``timed_s``: training steps (less the first step of each batch shape, where compilation and
  autotuning happen: ``warmup_s``) plus the final test-time-augmented test pass. airbench times
  the same two things (plus its whitening init, which ours computes on the host before the run);
  neither side counts its per-epoch evaluation, which ours still runs and reports as ``eval_s``.
- ``setup_s``: data load, whitening statistics, upload to the device (before the trainer's clock).
- ``total_s``: the trainer's wall time (training, per-epoch evaluation, final test).

The JSON is rewritten after every run, so a run stopped by its time budget keeps the finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def one_run(args, seed: int) -> dict:
    from cifarbench.config import build_config
    from cifarbench.engine.reporter import RecordingReporter
    from cifarbench.engine.trainer import Trainer

    overrides = {"dataset": f"npz:{args.npz}", "backend": "torch", "device": args.device,
                 "precision": args.precision, "seed": seed}
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.compile_mode:
        overrides["compile_mode"] = args.compile_mode
    cfg = build_config(args.recipe, overrides)
    cfg.save_every = cfg.epochs
    rec = RecordingReporter()
    t0 = time.perf_counter()
    summary = Trainer(cfg, rec, run_dir=None, write=False).run()
    wall = time.perf_counter() - t0
    test_s = summary.total_time_s - rec.records[-1].elapsed_s  # the final (TTA) test pass
    train_s, warm_s = summary.train_time_s, summary.warmup_s
    return {
        "seed": seed, "test_accuracy": summary.test_accuracy, "final_train_loss": summary.final_train_loss,
        "timed_s": train_s - warm_s + test_s, "train_s": train_s, "warmup_s": warm_s, "test_s": test_s,
        "eval_s": sum(r.eval_time_s for r in rec.records), "total_s": summary.total_time_s,
        "setup_s": wall - summary.total_time_s, "images_per_s": summary.images_per_s,
        "epochs": summary.epochs, "batch_size": summary.batch_size, "device_name": summary.device_name,
        "train_images": summary.train_images, "test_images": summary.test_images,
    }


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", required=True, help="decoded npz (x_train, y_train, x_test, y_test)")
    ap.add_argument("--recipe", default="speedrun", help="speedrun or speedrun-muon (issue 21)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup-runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--compile-mode", default="", help="torch.compile mode (default: eager, as the recipe)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--eval-batch-size", type=int)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.compile_mode:
        import torch._dynamo

        # each run compiles a fresh module: keep dynamo from falling back to eager after its recompile limit
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
    out = Path(args.out)
    result = {"recipe": args.recipe, "dataset": Path(args.npz).name, "device": args.device, "precision": args.precision,
              "compile_mode": args.compile_mode or "off", "warmup_runs": [], "runs": []}
    for i in range(args.warmup_runs + args.runs):
        row = one_run(args, args.seed + i)
        kind = "warmup_runs" if i < args.warmup_runs else "runs"
        result[kind].append(row)
        runs = result["runs"]
        result["accuracy"] = stats([r["test_accuracy"] for r in runs])
        result["timed_s"] = stats([r["timed_s"] for r in runs])
        result["total_s"] = stats([r["total_s"] for r in runs])
        result["warmup_s"] = stats([r["warmup_s"] for r in runs])
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)
        print(f"{kind[:-1]} {i}: seed {row['seed']} test acc {row['test_accuracy']:.4f} timed {row['timed_s']:.2f} s "
              f"(warm-up {row['warmup_s']:.2f} s, per-epoch eval {row['eval_s']:.2f} s, setup {row['setup_s']:.2f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
