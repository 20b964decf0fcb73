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


class StepProgress:
    """One epoch's progress events; ``tick`` is called after every step with the step count done."""

    def __init__(self, reporter, backend, epoch: int, epochs: int, first_step: int, last_step: int,
                 batch_size: int, plan: RunPlan, clock=time.perf_counter):
        self.rep, self.backend, self.clock = reporter, backend, clock
        self.epoch, self.epochs, self.first, self.last = epoch, epochs, first_step, last_step
        self.batch_size, self.plan = batch_size, plan
        self.every_s = getattr(reporter, "progress_every_s", None)
        self.every_steps = getattr(reporter, "progress_every_steps", None)
        self.active = bool(self.every_s or self.every_steps)
        self.t0 = clock()
        self.next_t = self.t0 + (self.every_s or float("inf"))
        self.next_step = first_step + (self.every_steps or 10**18)

    def tick(self, done: int, lr: float, warm_s: float = 0.0, warm_steps: int = 0) -> None:
        """``done``: steps of this epoch finished (absolute index + 1). Cheap unless an event is due."""
        if not self.active:
            return
        if done < self.next_step and done < self.last:  # the last step always reports (then evaluation runs)
            now = self.clock()
            if now < self.next_t:
                return
        self.emit(done, lr, warm_s, warm_steps)

    def emit(self, done: int, lr: float, warm_s: float, warm_steps: int) -> dict[str, Any]:
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
        self.rep.step_progress(p)
        self.next_t = self.clock() + (self.every_s or float("inf"))
        self.next_step = done + (self.every_steps or 10**18)
        return p
