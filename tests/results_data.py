"""Bench results and run logs shaped exactly as cifarbench writes them, for the results-database tests.

The numbers are inputs (window times, accuracies) from which the statistics are computed with the
project's own ``summarize``; the fingerprint is this machine's, or a copy of it renamed to stand for
a second machine.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cifarbench import fingerprint
from cifarbench.engine.metrics import summarize

_FP: dict[str, Any] = {}


def machine(name: str | None = None) -> dict[str, Any]:
    """This machine's fingerprint; with a name, a second machine (other host and CPU, so another id)."""
    if not _FP:
        _FP.update(fingerprint.collect(with_availability=False))
    fp = copy.deepcopy(_FP)
    if name:
        fp["hostname"] = name
        fp["hardware"]["cpu_model"] = f"{name} CPU"
        fp["fingerprint_id"] = fingerprint.fingerprint_id(fp)
    return fp


def throughput_row(backend: str, windows_s: list[float], images: int = 64, model: str = "cnn", batch: int = 16) -> dict:
    return {"backend": backend, "device": "cpu", "model": model, "precision": "fp32", "batch_size": batch,
            "device_name": "CPU", "params": 1000, "train_ips": summarize([images / t for t in windows_s]),
            "train_window_s": summarize(windows_s), "step_ms": 1000 * windows_s[0] / 4}


def training_row(backend: str, accs: list[float], times: list[float], model: str = "cnn", batch: int = 16) -> dict:
    curves = [{"seed": k, "elapsed_s": [t / 2, t], "eval_acc": [a / 2, a], "train_loss": [2.0, 1.0]}
              for k, (a, t) in enumerate(zip(accs, times))]
    return {"backend": backend, "device": "cpu", "model": model, "precision": "fp32", "batch_size": batch,
            "device_name": "CPU", "params": 1000, "dataset": "npz:tiny", "epochs": 2, "seeds": len(accs),
            "total_time_s": summarize(times), "images_per_s": summarize([1000 / t for t in times]),
            "test_accuracy": summarize(accs), "time_to_target_s": summarize([t / 2 for t in times]),
            "curves": curves}


def bench_doc(rows: list[dict], created: str = "2026-12-01T10:00:00+00:00", fp: dict | None = None,
              mode: str = "throughput") -> dict[str, Any]:
    fp = fp or machine()
    return {"kind": "cifarbench-bench", "version": 1, "mode": mode, "created": created,
            "settings": {"mode": mode, "dataset": "synthetic", "target_acc": 0.5 if mode == "training" else None},
            "config": {"model": "cnn"}, "rows": rows, "skipped": [], "baseline": None, "relative_meaning": "",
            "fingerprint_id": fp["fingerprint_id"], "fingerprint": fp}


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path
