"""What the trainer keeps in its run directory, and reads back to resume.

A checkpoint generation (cifarbench.checkpoint) holds everything the metrics need too: the
position (epoch, step in the epoch), the epoch rows so far, the sums of a partly trained epoch
and the best validation epoch, so a run interrupted anywhere and resumed writes the rows an
uninterrupted run writes. metrics.jsonl/metrics.csv are rewritten whole from the rows.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cifarbench import atomic
from cifarbench import checkpoint as ckpt
from cifarbench.config import RunConfig
from cifarbench.engine.records import METRIC_FIELDS, EpochRecord, EpochTrain, RecordError


@dataclass
class ResumePoint:
    """Where a saved run stands: its position, rows, partial epoch, best epoch and tensors."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps of the next epoch done
    partial: EpochTrain | None = None  # the part of that epoch trained before the save
    best: dict[str, Any] | None = None  # {"epoch", "eval_acc"} of best/ (validation only)
    records: list[EpochRecord] = field(default_factory=list)
    step_records: list[dict[str, Any]] = field(default_factory=list)  # steps.jsonl's rows so far
    state: dict[str, np.ndarray] | None = None
    opt_state: dict[str, np.ndarray] | None = None


def load_resume_point(run_dir: Path, spec, warn) -> ResumePoint:
    """The newest complete generation of ``run_dir``, verified and checked against ``spec``."""
    loaded = ckpt.load_checkpoint(run_dir)
    for note in loaded.notes:
        warn(note)
    ckpt.check_compatible(loaded.state, spec, str(run_dir))
    side = loaded.sidecar
    point = ResumePoint(state=loaded.state)
    try:
        point.epoch = int(side.get("epoch", 0))
        point.step_in_epoch = int(side.get("step_in_epoch", 0))
        if side.get("partial_epoch"):
            point.partial = EpochTrain.from_dict(side["partial_epoch"])
        point.best = side.get("best")
        point.step_records = list(side.get("step_records") or [])  # committed with the rows, as one unit
        if "records" in side:  # the rows committed with this checkpoint
            point.records = [EpochRecord.from_dict(r) for r in side["records"]]
        else:  # written before checkpoints held their rows
            point.records = _rows_up_to(run_dir / "metrics.jsonl", point.epoch)
            if point.step_in_epoch:
                warn(f"this checkpoint predates saved partial epochs: epoch {point.epoch + 1}'s "
                                   "train loss/accuracy will count only the steps after the resume")
    except (TypeError, ValueError) as exc:  # RecordError is a ValueError
        raise ckpt.CheckpointError(f"corrupt {loaded.run_dir / ckpt.SIDECAR}: {exc}") from None
    point.opt_state = ckpt.load_optimizer_state(loaded.run_dir)
    return point


def _rows_up_to(metrics: Path, epoch: int) -> list[EpochRecord]:
    if not metrics.is_file():
        return []
    try:
        rows = [EpochRecord.from_dict(json.loads(ln)) for ln in metrics.read_text().splitlines() if ln.strip()]
    except (json.JSONDecodeError, RecordError) as exc:
        raise ckpt.CheckpointError(f"corrupt {metrics}: {exc}") from None
    return [r for r in rows if r.epoch <= epoch]


def save_generation(run_dir: Path, backend, meta: dict[str, Any], cfg: RunConfig, epoch: int, step_in_epoch: int,
                    global_step: int, finished: bool, records: Sequence[EpochRecord],
                    partial: EpochTrain | None, best: dict[str, Any] | None, is_best: bool,
                    step_records: Sequence[dict[str, Any]] = ()) -> None:
    """One checkpoint generation: weights, optimizer, position, the rows so far, a partial epoch."""
    side = {
        "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "epochs": cfg.epochs,
        "finished": finished, "config": cfg.model_dump(mode="json"),
        "saved_at": datetime.now().isoformat(timespec="seconds"),
        "records": [r.to_dict() for r in records], "step_records": list(step_records),
        "partial_epoch": partial.to_dict() if partial is not None else None,
        "best": best,
    }
    ckpt.save_checkpoint(run_dir, backend.state_dict(), meta, backend.optimizer_state(), side,
                         keep=cfg.keep_checkpoints, best=is_best)


def write_metrics(run_dir: Path, records: Sequence[EpochRecord], step_records: Sequence[dict] | None = None) -> None:
    """metrics.jsonl and metrics.csv from the rows; steps.jsonl (the per-step log) when given."""
    rows = [r.to_dict() for r in records]
    atomic.write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic.kill_point("metrics")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(run_dir / "metrics.csv", buf.getvalue())
    if step_records is not None:
        atomic.kill_point("steps")
        atomic.write_text(run_dir / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in step_records))
