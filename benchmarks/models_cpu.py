"""One training epoch of every registered model on the PyTorch CPU backend: a Markdown table.

    python benchmarks/models_cpu.py --dataset cifar10 --data-dir DIR --limit 2000 --threads 1

Each model gets one epoch through the project's Trainer (the `cifarbench train` loop: same
data order, augmentation, timing and evaluation), AdamW 3e-4, batch 64, no augmentation, then
the test pass. ``--limit`` keeps the first N training images (and ``--test-limit`` the first M
test images) so that the big models stay affordable: the subset is handed to the Trainer as an
``npz:`` data set in a temporary directory. Columns: parameters; training images/s and epoch
time (the epoch's training phase plus its evaluation, as the Trainer measures them; a single
epoch includes the first-step warm-up); evaluation images/s over the test images; test accuracy
after the epoch. A model that fails (too little memory, ...) gets its error in the table and
the others still run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from cifarbench.config import build_config
from cifarbench.engine.trainer import Trainer
from cifarbench.errors import CifarbenchError

COLUMNS = ("model", "parameters", "train images/s", "eval images/s", "epoch time (s)", "test accuracy")


def subset_npz(dataset: str, data_dir: Optional[str], limit: Optional[int], test_limit: Optional[int],
               out: Path) -> str:
    """The first ``limit`` training / ``test_limit`` test images of a data set, as an npz: data set name."""
    from cifarbench.data import load_dataset

    ds = load_dataset(dataset, data_dir)
    n, m = len(ds.y_train) if limit is None else limit, len(ds.y_test) if test_limit is None else test_limit
    np.savez(out, x_train=ds.x_train[:n], y_train=ds.y_train[:n], x_test=ds.x_test[:m], y_test=ds.y_test[:m],
             class_names=np.array(list(ds.class_names)))
    return f"npz:{out}"


def run_model(model: str, dataset: str, threads: Optional[int], batch_size: int, seed: int) -> dict[str, Any]:
    """One epoch through the Trainer (nothing written); the row's numbers."""
    cfg = build_config(None, {
        "model": model, "dataset": dataset, "backend": "torch", "device": "cpu", "epochs": 1,
        "batch_size": batch_size, "eval_batch_size": 500, "threads": threads, "seed": seed,
    })
    trainer = Trainer(cfg, write=False)
    summary = trainer.run()
    rec = trainer.records[-1]
    return {
        "model": model, "parameters": summary.params, "train images/s": rec.images_per_s,
        "eval images/s": summary.eval_images / rec.eval_time_s if rec.eval_time_s > 0 else float("inf"),
        "epoch time (s)": rec.epoch_time_s, "test accuracy": summary.test_accuracy,
        "train_images": summary.train_images, "test_images": summary.test_images,
        "device_name": summary.device_name,
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], col: str) -> str:
        if col == "model":
            return f"`{row[col]}`"
        if "error" in row:
            return row["error"] if col == "parameters" else "-"
        v = row[col]
        if col == "parameters":
            return f"{v:,}"
        if col == "test accuracy":
            return f"{100 * v:.2f}%"
        if v < 10:  # three significant digits: a tiny epoch must not print as 0.0
            return f"{v:.3g}"
        return f"{v:,.1f}"

    rule = "|" + "|".join("---" if c == "model" else "---:" for c in COLUMNS) + "|"
    lines = ["| " + " | ".join(COLUMNS) + " |", rule]
    lines += ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> str:
    from cifarbench.models import model_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N training images (default: all)")
    ap.add_argument("--test-limit", type=int, default=None, help="first M test images (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    ap.add_argument("--models", default=None, help="comma list (default: every registered model)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    models = args.models.split(",") if args.models else model_names()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_npz(args.dataset, args.data_dir, args.limit, args.test_limit, Path(tmp) / "subset.npz")
        for model in models:
            try:
                rows.append(run_model(model, data, args.threads, args.batch_size, args.seed))
            except (CifarbenchError, RuntimeError, MemoryError) as exc:
                rows.append({"model": model, "error": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"})
    done = next((r for r in rows if "error" not in r), {})
    head = (f"{args.dataset}: {done.get('train_images', '?')} training / {done.get('test_images', '?')} test images, "
            f"1 epoch, batch {args.batch_size}, AdamW 3e-4, {done.get('device_name', 'torch cpu')}, "
            f"load average {os.getloadavg()[0]:.2f}")
    text = head + "\n\n" + markdown(rows)
    print(text)
    return text


if __name__ == "__main__":
    main()
