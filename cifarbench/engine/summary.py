"""The run's summary from its epoch records and final test, and the run_log.json made from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cifarbench import atomic
from cifarbench.engine.records import EpochRecord, RunInfo, RunSummary


def run_summary(info: RunInfo, records: Sequence[EpochRecord], test: dict[str, Any], total_time_s: float,
                checkpoint: str | None, class_names: Sequence[str], seed: int, spec,
                test_time_s: float | None = None) -> RunSummary:
    """``test``: evaluate_logits of the final test; ``total_time_s``: the run's, the test included."""
    last = records[-1] if records else None
    ips = [r.images_per_s for r in records]
    steady = ips[1:] if len(ips) > 1 else ips
    return RunSummary(
        **vars(info),
        total_time_s=total_time_s,
        train_time_s=sum(r.train_time_s for r in records),
        time_per_epoch_s=float(np.mean([r.epoch_time_s for r in records])) if records else None,
        images_per_s=float(np.median(steady)) if steady else None,
        warmup_s=sum(r.warmup_s for r in records),
        final_train_loss=last.train_loss if last else None, final_train_acc=last.train_acc if last else None,
        final_val_acc=last.eval_acc if last and info.eval_split == "val" else None,
        test_accuracy=test["accuracy"], test_loss=test["loss"], test=test, test_time_s=test_time_s,
        checkpoint=checkpoint, class_names=tuple(class_names), seed=seed,
        **_cost(spec, records),
    )


def _cost(spec, records: Sequence[EpochRecord]) -> dict[str, Any]:
    """Forward MACs and training FLOPs per image (models.summary), and the training PFLOPs of the
    run, as airbench reports them; None for another library's modules (tv:)."""
    from cifarbench.models.summary import cost_per_image

    cost = cost_per_image(spec)
    images = sum(int(r.train_images or 0) for r in records)  # trained, resumed parts included
    per_image = cost["train_flops_per_image"]
    return {**cost, "train_pflops": None if per_image is None else per_image * images / 1e15}


def write_run_log(run_dir: Path, cfg, summary: RunSummary, backend) -> None:
    try:
        from cifarbench.fingerprint import training_run_log
    except ImportError:
        log = {"config": cfg.model_dump(mode="json"), "results": summary.to_dict()}
    else:
        log = training_run_log(cfg, summary, backend)
    atomic.write_json(run_dir / "run_log.json", log)
