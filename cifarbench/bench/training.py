"""Training mode: full training runs of one recipe on each backend, through the shared Trainer.

Per combination and seed: total wall time (as the Trainer measures it: every epoch's training
and evaluation, plus the final test pass), time per epoch, final test accuracy and training
loss, and the time at which the per-epoch evaluation first reached ``target_acc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from cifarbench.bench.matrix import Case
from cifarbench.config import build_config
from cifarbench.engine.metrics import summarize
from cifarbench.engine.records import EpochRecord
from cifarbench.engine.reporter import RecordingReporter, Reporter


class _Forward(RecordingReporter):
    """Records the run for bench and passes progress upward: a line every 10% of an epoch (or 30 s),
    and one per epoch."""

    progress_every_s = 30.0

    def __init__(self, outer: Reporter, label: str):
        super().__init__()
        self.outer, self.label = outer, label

    def epoch_begin(self, epoch: int, steps: int) -> None:
        self.progress_every_steps = max(-(-steps // 10), 1)

    def step_progress(self, p: dict[str, Any]) -> None:
        if p["step"] < p["steps"]:
            loss = "-" if p["loss"] is None else f"{p['loss']:.4f}"
            self.outer.message(f"{self.label}: epoch {p['epoch']}/{p['epochs']} step {p['step']}/{p['steps']} "
                               f"loss {loss} {p['images_per_s']:,.3g} img/s")

    def warning(self, text: str) -> None:
        super().warning(text)
        self.outer.warning(f"{self.label}: {text}")

    def epoch_end(self, record: EpochRecord) -> None:
        super().epoch_end(record)
        self.outer.message(
            f"{self.label}: epoch {record.epoch} loss {record.train_loss:.4f} "
            f"{record.eval_split} acc {100 * record.eval_acc:.2f}% ({record.epoch_time_s:.1f} s)"
        )


def time_to_target(records: Sequence[EpochRecord], target: float | None) -> float | None:
    """elapsed_s of the first epoch whose eval accuracy reached target (None if never)."""
    if target is None:
        return None
    return next((r.elapsed_s for r in records if r.eval_acc >= target), None)


def run_case(case: Case, config_file: str | None, overrides: dict[str, Any], seeds: Sequence[int],
             target_acc: float | None, reporter: Reporter, out_dir: Path | None) -> dict[str, Any]:
    from cifarbench.engine.trainer import Trainer

    runs = []
    for seed in seeds:
        label = f"{case.label}/seed{seed}"
        cfg = build_config(config_file, {
            **overrides, "backend": case.backend, "device": case.device, "model": case.model,
            "precision": case.precision, "batch_size": case.batch_size, "seed": seed,
        })
        cfg.save_every = cfg.epochs  # one checkpoint at the end: writes stay out of the epochs being timed
        run_dir = out_dir / "runs" / label.replace("/", "-").replace(":", "-") if out_dir else None
        rec = _Forward(reporter, label)
        summary = Trainer(cfg, rec, run_dir=run_dir, write=run_dir is not None, overwrite=True,
                          step_log=False).run()  # a rerun replaces; no per-step log: no device reads in timed epochs
        runs.append((seed, summary, rec.records, run_dir))
    return _row(case, runs, target_acc)


def _row(case: Case, runs: list, target_acc: float | None) -> dict[str, Any]:
    first = runs[0][1]
    reached = [t for t in (time_to_target(recs, target_acc) for _, _, recs, _ in runs) if t is not None]
    return {
        **case.as_dict(), "device_name": first.device_name, "params": first.params,
        "dataset": first.dataset, "epochs": first.epochs, "seeds": len(runs),
        "seed_values": [s for s, _, _, _ in runs],
        "total_time_s": summarize([s.total_time_s for _, s, _, _ in runs]),
        "time_per_epoch_s": summarize([s.time_per_epoch_s for _, s, _, _ in runs]),
        "images_per_s": summarize([s.images_per_s for _, s, _, _ in runs if s.images_per_s is not None]),
        "test_accuracy": summarize([s.test_accuracy for _, s, _, _ in runs]),
        "final_loss": summarize([s.final_train_loss for _, s, _, _ in runs]),
        "test_loss": summarize([s.test_loss for _, s, _, _ in runs]),
        "time_to_target_s": summarize(reached), "target_reached": len(reached),
        "curves": [{"seed": seed, "elapsed_s": [r.elapsed_s for r in recs], "eval_acc": [r.eval_acc for r in recs],
                    "train_loss": [r.train_loss for r in recs], "train_time_s": [r.train_time_s for r in recs],
                    "test_time_s": s.test_time_s} for seed, s, recs, _ in runs],
        "run_dirs": [str(d) for _, _, _, d in runs if d is not None],
    }
