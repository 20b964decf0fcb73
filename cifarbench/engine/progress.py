"""Progress inside an epoch: when to read the device's running sums, and what the reporter is told.

Reading the loss a backend accumulates on its device synchronises the host with the device, so it
never happens per step: only when the reporter asks for progress (``Reporter.progress_every_s`` /
``progress_every_steps``) and then at most every that many seconds or steps. A reporter that asks
for nothing (the silent default, bench's recorder) costs one counter increment per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class RunPlan:
    """What is left of the run after the current epoch, for the run's ETA."""

    steps_after: int  # optimizer steps in the epochs after this one
    evals_left: int  # evaluations still to come, this epoch's included (the final test counts as one)
    eval_s: float | None  # seconds of the last evaluation (None before the first)


# The per-step log (steps.jsonl): a row every 10% of an epoch or every 30 s, whichever comes first,
# as the piped progress lines; each row's loss and accuracy are the means over the steps since the last.
STEP_LOG_FRACTION, STEP_LOG_SECONDS = 0.1, 30.0


class Cadence:
    """Due every ``every_steps`` steps or ``every_s`` seconds (either may be None: never by it),
    counted from ``start`` and from each time it was last taken."""

    def __init__(self, every_steps: int | None, every_s: float | None, start: int, now: float) -> None:
        self.every_steps, self.every_s = every_steps, every_s
        self.taken(start, now)

    def due(self, done: int, now: float) -> bool:
        return done >= self.next_step or now >= self.next_t

    def taken(self, done: int, now: float) -> None:
        self.next_step = done + (self.every_steps or 10**18)
        self.next_t = now + (self.every_s or float("inf"))


class StepProgress:
    """One epoch's progress events; ``tick`` is called after every step with the step count done.

    With ``step_log`` (a list), rows of the per-step log are appended to it on their own cadence
    (``STEP_LOG_*``); a read of the device sums serves both when they fall due together."""

    def __init__(self, reporter, backend, epoch: int, epochs: int, first_step: int, last_step: int,
                 batch_size: int, plan: RunPlan, clock=time.perf_counter, step_log: list | None = None,
                 steps_per_epoch: int | None = None, global_base: int = 0):
        self.rep, self.backend, self.clock = reporter, backend, clock
        self.epoch, self.epochs, self.first, self.last = epoch, epochs, first_step, last_step
        self.batch_size, self.plan = batch_size, plan
        every_s = getattr(reporter, "progress_every_s", None)
        every_steps = getattr(reporter, "progress_every_steps", None)
        self.active = bool(every_s or every_steps)
        self.t0 = clock()
        self.report_at = Cadence(every_steps, every_s, first_step, self.t0)
        self.log, self.global_base = step_log, global_base
        self.per_epoch = steps_per_epoch or last_step
        log_every = max(int(-(-self.per_epoch * STEP_LOG_FRACTION // 1)), 1)
        self.log_at = Cadence(log_every, STEP_LOG_SECONDS, first_step, self.t0)
        self.log_prev = (0.0, 0, 0)  # the device sums (loss, correct, count) at the last row
        self.log_step = first_step

    def tick(self, done: int, lr: float, warm_s: float = 0.0, warm_steps: int = 0) -> None:
        """``done``: steps of this epoch finished (absolute index + 1). Cheap unless an event is due."""
        if not self.active and self.log is None:
            return
        last = done >= self.last  # the last step always reports (then evaluation runs)
        now = self.clock()
        report = self.active and (last or self.report_at.due(done, now))
        log = self.log is not None and (last or self.log_at.due(done, now))
        if report or log:
            self.emit(done, lr, warm_s, warm_steps, report=report, log=log)

    def _log_row(self, p: dict[str, Any], stats) -> None:
        loss, correct, count = stats.loss_sum, stats.correct, stats.count
        n = count - self.log_prev[2]
        if n > 0:
            self.log.append({
                "epoch": self.epoch, "step": p["step"], "global_step": self.global_base + p["step"],
                "epoch_pos": self.epoch - 1 + p["step"] / self.per_epoch,
                "loss": (loss - self.log_prev[0]) / n, "acc": (correct - self.log_prev[1]) / n,
                "steps_in_row": p["step"] - self.log_step, "lr": p["lr"], "images_per_s": p["images_per_s"],
                "elapsed_s": p["elapsed_s"],
            })
        self.log_prev = (loss, correct, count)
        self.log_step = p["step"]
        self.log_at.taken(p["step"], self.clock())

    def emit(self, done: int, lr: float, warm_s: float, warm_steps: int, report: bool = True,
             log: bool = False) -> dict[str, Any]:
        stats = self.backend.running_stats()  # synchronises: the clock below covers finished work only
        now = self.clock()
        elapsed = now - self.t0
        steps = done - self.first
        steady_steps, steady_s = steps - warm_steps, elapsed - warm_s
        if steady_steps <= 0 or steady_s <= 0:  # only warm-up so far: the plain ratio
            steady_steps, steady_s = steps, elapsed
        per_step = steady_s / steady_steps if steady_steps else 0.0
        left = self.last - done
        epoch_eta = left * per_step
        eval_s = self.plan.eval_s or 0.0
        run_eta = (left + self.plan.steps_after) * per_step + self.plan.evals_left * eval_s
        count = stats.count if stats is not None else None
        p = {
            "epoch": self.epoch, "epochs": self.epochs, "step": done, "steps": self.last,
            "images_per_s": self.batch_size / per_step if per_step > 0 else 0.0,
            "loss": stats.loss_sum / count if count else None,
            "acc": stats.correct / count if count else None,
            "samples": count,  # behind loss/acc (trackers take differences: the mean since their last point)
            "lr": lr, "elapsed_s": elapsed, "epoch_eta_s": epoch_eta,
            "run_eta_s": run_eta, "eta_includes_eval": self.plan.eval_s is not None,
        }
        if log and stats is not None:
            self._log_row(p, stats)
        if report:
            self.rep.step_progress(p)
            self.report_at.taken(done, self.clock())
        return p
