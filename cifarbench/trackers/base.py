"""What every tracker shares: the Reporter events turned into (scalars, global step)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cifarbench.engine.records import EpochRecord, RunInfo, RunSummary
from cifarbench.engine.reporter import Reporter


def flat_params(config: dict[str, Any], info: RunInfo) -> dict[str, Any]:
    """The resolved config (lists as comma text, unset as 'none') and what the run found out
    (parameter count, device, image counts): the hyper-parameters a tracker records."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value) or "none"
        out[key] = "none" if value is None else value
    for key in ("params", "device_name", "train_images", "eval_images", "test_images", "steps_per_epoch",
                "total_steps"):
        if getattr(info, key, None) is not None:
            out[f"run.{key}"] = getattr(info, key)
    return out


class Tracker(Reporter):
    """A Reporter sink that logs scalars. A subclass writes: ``open``, ``log``, ``end``.

    ``interval`` is ``--log-interval`` parsed: (steps, fraction of an epoch, seconds), any None.
    """

    name = "tracker"

    def __init__(self, config: dict[str, Any], interval: tuple, resume: bool) -> None:
        self.config, self.resume = config, resume
        self._steps, self._frac, self._secs = interval
        self.steps_per_epoch = self.total_steps = 0
        self._prev = (0.0, 0.0, 0)  # loss sum, correct, samples at the previous point of this epoch
        self._open = False
        self.notes: list[str] = []  # lines for the display after start (the Tee prints them)

    # ----- what a tracker writes -------------------------------------------------------------
    def open(self, run_dir: Path, params: dict[str, Any], run_name: str, start_step: int) -> None:
        """Start (or, ``self.resume``, continue) the tracker's run; ``start_step``: the global step
        the run goes on from (points after it, logged by a killed run, are logged again)."""
        raise NotImplementedError

    def log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """After each epoch: what was logged so far reaches the disk (a killed run keeps it)."""

    def end(self, ok: bool) -> None:
        """Flush and close; ``ok`` False: the run failed or was interrupted."""

    # ----- the Reporter events ---------------------------------------------------------------
    def start(self, info: RunInfo) -> None:
        self.steps_per_epoch, self.total_steps = info.steps_per_epoch, info.total_steps
        run_dir = Path(info.run_dir)
        self.open(run_dir, flat_params(self.config, info), run_dir.name, int(info.start_step or 0))
        self._open = True

    def epoch_begin(self, epoch: int, steps: int) -> None:
        every = [n for n in (self._steps, self._frac and math.ceil(self._frac * steps)) if n]
        self.progress_every_steps = max(min(every), 1) if every else None
        self.progress_every_s = self._secs
        self._prev = (0.0, 0.0, 0)

    def step_progress(self, p: dict[str, Any]) -> None:
        step = (p["epoch"] - 1) * self.steps_per_epoch + p["step"]
        scalars = {"step/lr": float(p["lr"]), "step/images_per_s": float(p["images_per_s"])}
        n = p.get("samples")
        if n and p.get("loss") is not None:
            loss_sum, correct = p["loss"] * n, p["acc"] * n
            prev_loss, prev_correct, prev_n = self._prev
            if n > prev_n:  # the mean over the steps since the previous point
                scalars["step/loss"] = (loss_sum - prev_loss) / (n - prev_n)
                scalars["step/acc"] = (correct - prev_correct) / (n - prev_n)
            self._prev = (loss_sum, correct, n)
        self.log(scalars, step)

    def epoch_end(self, r: EpochRecord) -> None:
        split = r.eval_split
        scalars = {
            "epoch/number": float(r.epoch), "epoch/train_loss": r.train_loss, "epoch/train_acc": r.train_acc,
            f"epoch/{split}_loss": r.eval_loss, f"epoch/{split}_acc": r.eval_acc,
            "epoch/time_s": r.epoch_time_s, "epoch/images_per_s": r.images_per_s, "epoch/lr": r.lr,
        }
        self.log({k: float(v) for k, v in scalars.items() if v is not None}, self._epoch_step(r.epoch))
        self.flush()

    def finish(self, s: RunSummary) -> None:
        scalars = {"test/loss": s.test_loss, "test/acc": s.test_accuracy, "run/total_time_s": s.total_time_s,
                   "run/images_per_s": getattr(s, "images_per_s", None)}
        self.log({k: float(v) for k, v in scalars.items() if v is not None}, self.total_steps)
        self._close(ok=True)

    def close(self, failed: bool = False) -> None:
        self._close(ok=not failed)

    def _close(self, ok: bool) -> None:
        if self._open:
            self._open = False
            self.end(ok)

    def _epoch_step(self, epoch: int) -> int:
        return min(epoch * self.steps_per_epoch, self.total_steps)
