"""The multi-process training path on one GPU: run under `torchrun --nproc-per-node 1`.

    torchrun --standalone --nproc-per-node 1 benchmarks/gpu_ddp_check.py --device cuda --out ddp.json

cifarbench treats WORLD_SIZE=1 as a plain run (nothing to share), so `torchrun --nproc-per-node 1
-m cifarbench train` never reaches torch.distributed. With one GPU the only way to exercise the
nccl code path (process group, SyncBatchNorm conversion, DistributedDataParallel, the all-reduced
epoch statistics and the all-gathered evaluation) is to force it: this script makes the engine's
rank detection return rank 0 of 1, trains `resnet20` (BatchNorm, no dropout: a distributed rank
draws its own dropout masks) through the Trainer, then trains the same seed again as a plain
single-process run and compares the two. On one rank DDP averages over one gradient and
SyncBatchNorm sees the whole batch, so both runs compute the same function; they differ only by
float rounding in reductions done in another order (reported, not asserted: with cuDNN autotuning
on, even two plain runs need not agree bit for bit). --device cpu uses gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def train(npz: str, device: str, epochs: int, forced: bool) -> dict:
    import numpy as np

    from cifarbench.config import build_config
    from cifarbench.engine import distributed
    from cifarbench.engine.reporter import RecordingReporter
    from cifarbench.engine.trainer import Trainer

    real_detect = distributed.detect
    if forced:
        distributed.detect = lambda environ=None: distributed.DistEnv(0, 1, int(os.environ.get("LOCAL_RANK", 0)))
    try:
        cfg = build_config(None, {"model": "resnet20", "dataset": f"npz:{npz}", "backend": "torch", "device": device,
                                  "epochs": epochs, "batch_size": 128, "opt": "sgd", "lr": 0.05, "momentum": 0.9,
                                  "weight_decay": 5e-4, "augment": ["crop", "flip"], "seed": 0})
        trainer = Trainer(cfg, RecordingReporter(), run_dir=None, write=False)
        summary = trainer.run()
        state = trainer.backend.state_dict()
        pg = None
        if forced:
            import torch.distributed as dist

            pg = dist.get_backend() if dist.is_initialized() else None
            distributed.shutdown()
    finally:
        distributed.detect = real_detect
    return {"device_name": summary.device_name, "process_group": pg, "test_accuracy": summary.test_accuracy,
            "final_train_loss": summary.final_train_loss, "total_time_s": summary.total_time_s,
            "state": {k: np.asarray(v) for k, v in state.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="256 training images, 1 epoch (CPU dry run)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if "WORLD_SIZE" not in os.environ:
        print("run me under torchrun --nproc-per-node 1", file=sys.stderr)
        return 2
    import numpy as np

    from cifarbench.data import make_synthetic

    n_train, n_test, epochs = (256, 64, 1) if args.tiny else (5000, 1000, args.epochs)
    ds = make_synthetic(n_train=n_train, n_test=n_test)
    with tempfile.TemporaryDirectory() as tmp:
        npz = str(Path(tmp) / "synthetic.npz")
        np.savez(npz, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
                 class_names=np.array(ds.class_names))
        ddp = train(npz, args.device, epochs, forced=True)
        plain = train(npz, args.device, epochs, forced=False)
    a, b = ddp.pop("state"), plain.pop("state")
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in b)
    den = sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in b)
    finite = all(np.isfinite(a[k]).all() for k in a)
    expected = "nccl" if args.device == "cuda" else "gloo"
    result = {"world_size": int(os.environ["WORLD_SIZE"]), "expected_process_group": expected,
              "ok": ddp["process_group"] == expected and finite and " x 1 ranks" in ddp["device_name"],
              "ddp": ddp, "plain": plain, "weights_rel_diff": (num / den) ** 0.5 if den else None,
              "train_images": n_train, "epochs": epochs}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
