"""Prove on a real GPU that the torch backend's training step never synchronises with the host.

    python benchmarks/gpu_sync_check.py [--device cuda] [--steps 6]

Runs a few steps of each case under ``torch.cuda.set_sync_debug_mode("error")``: any
operation that waits for the GPU inside ``train_step`` (``.item()``, a host copy, a GradScaler
reading its inf flag) raises, and the case is reported as FAILED with the reason. Epoch ends
(``end_epoch``) synchronise by design and run outside the checked region. On a machine without
CUDA the check cannot run: it says so and exits 0 (tests/test_torch_fastpath.py holds the CPU
check of the same property).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.models import create_spec, init_params

CASES = (  # model, precision, optimizer, compile mode (None = eager)
    ("cnn", "fp32", "adamw", None),
    ("cnn", "fp16", "sgd", None),          # GradScaler + fused SGD: the found-inf flag stays on the device
    ("resnet18", "bf16", "sgd", None),
    ("resnet18", "fp16", "adamw", None),
    ("cnn", "fp32", "sgd", "reduce-overhead"),
)


def check(device: str, model: str, precision: str, opt: str, mode: str | None, steps: int, batch: int) -> str:
    import torch

    from cifarbench.backends.torch_backend import TorchBackend

    extra = {"compile": True, "compile_mode": mode} if mode else {}
    b = TorchBackend(device, TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3, label_smoothing=0.1, crop_pad=4,
                                          flip=True, precision=precision, extra=extra))
    spec = create_spec(model, 3, 32, 10)
    b.build(spec, init_params(spec, 0))
    b.configure_optimizer(OptimConfig(opt, weight_decay=5e-4, nesterov=opt == "sgd"))
    n = batch * steps
    rng = np.random.default_rng(0)
    b.set_data("train", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
    for epoch in range(2):  # epoch 0 warms up (compile, cuDNN autotuning); epoch 1 is checked
        b.begin_epoch(rng.permutation(n), rng.integers(0, 9, (n, 2)), rng.random(n) < 0.5, epoch)
        if epoch == 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(steps):
                b.train_step(i * batch, (i + 1) * batch, 0.01, 0.9)
        except RuntimeError as exc:
            return f"FAILED: {str(exc).splitlines()[0][:160]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        stats = b.end_epoch()
    return f"ok ({steps} steps, mean loss {stats.loss_sum / stats.count:.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    import torch

    if args.device != "cuda" or not torch.cuda.is_available():
        print("sync check skipped: needs a CUDA device (torch.cuda.set_sync_debug_mode)")
        return 0
    failed = 0
    for model, precision, opt, mode in CASES:
        result = check(args.device, model, precision, opt, mode, args.steps, args.batch)
        failed += result.startswith("FAILED")
        print(f"{model:9s} {precision:5s} {opt:6s} compile={mode or 'off':16s} {result}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
