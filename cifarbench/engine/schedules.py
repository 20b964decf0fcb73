"""Learning-rate and momentum schedules, computed by the engine for every backend.

Every schedule is a pure function of the global step, so a resumed run, and every backend,
sees exactly the same numbers. ``onecycle`` reproduces ``torch.optim.lr_scheduler.OneCycleLR``
(cosine annealing, two phases, momentum cycling) step for step: the value for optimizer step
k is the one OneCycleLR holds after k calls of ``scheduler.step()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

Schedule = Callable[[int], tuple[float, float]]  # global step -> (lr, momentum)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


@dataclass(frozen=True)
class OneCycle:
    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __call__(self, step: int) -> tuple[float, float]:
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        # OneCycleLR's phase boundaries are floats: pct_start * total - 1, and total - 1.
        phases = (
            (float(self.pct_start * self.total_steps) - 1, initial, self.max_lr, self.max_momentum, self.base_momentum),
            (float(self.total_steps - 1), self.max_lr, final, self.base_momentum, self.max_momentum),
        )
        start_step = 0.0
        for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                lr = _cos_anneal(lr0, lr1, pct)
                mom = _cos_anneal(m0, m1, pct) if self.cycle_momentum else self.max_momentum
                return lr, mom
            start_step = end_step
        raise AssertionError("unreachable")

    def describe(self) -> str:
        return f"OneCycleLR(max_lr={self.max_lr}, pct_start={self.pct_start}, cos, div_factor={self.div_factor})"


@dataclass(frozen=True)
class Warmup:
    """Linear warm-up over ``warmup_steps`` from ``start_factor * lr``, then ``after``."""

    lr: float
    warmup_steps: int
    start_factor: float
    momentum: float
    after: Callable[[int], float]
    text: str = "Constant"  # what ``after`` is, for run logs

    def describe(self) -> str:
        return self.text

    def __call__(self, step: int) -> tuple[float, float]:
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.lr * (self.start_factor + (1.0 - self.start_factor) * frac), self.momentum
        return self.after(step), self.momentum


@dataclass(frozen=True)
class Triangle:
    """Piecewise linear: ``start * lr`` at step 0, ``lr`` at step int(pct * total), ``end * lr``
    at step ``total`` (airbench94's schedule: 0.2 -> 1 over 23% of the steps -> 0.07)."""

    lr: float
    total_steps: int
    pct: float
    start: float
    end: float
    momentum: float

    def __call__(self, step: int) -> tuple[float, float]:
        peak = max(int(self.pct * self.total_steps), 1)
        if step <= peak:
            frac = self.start + (1.0 - self.start) * step / peak
        else:
            span = max(self.total_steps - peak, 1)
            frac = 1.0 + (self.end - 1.0) * min(step - peak, span) / span
        return self.lr * frac, self.momentum

    def describe(self) -> str:
        return f"Triangle(lr={self.lr}, pct={self.pct}, start={self.start}, end={self.end})"


def make_schedule(cfg, steps_per_epoch: int) -> Schedule:
    """Build the schedule of a RunConfig (cifarbench.config) for this many steps per epoch."""
    total = cfg.epochs * steps_per_epoch
    from cifarbench.backends.base import initial_momentum

    momentum = initial_momentum(cfg.opt, cfg.momentum, cfg.betas)
    if cfg.sched == "onecycle":
        return OneCycle(
            max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor, cycle_momentum=cfg.cycle_momentum,
            base_momentum=cfg.base_momentum, max_momentum=momentum,
        )
    if cfg.sched == "triangle":
        return Triangle(cfg.lr, total, cfg.pct_start, cfg.warmup_start_factor, cfg.final_lr_factor, momentum)
    warm = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)
    base, floor = cfg.lr, cfg.min_lr

    if cfg.sched == "constant":
        text = f"Constant(lr={cfg.lr}, warmup_epochs={cfg.warmup_epochs})"

        def after(step: int) -> float:
            return base
    elif cfg.sched == "cosine":
        text = f"Cosine(lr={cfg.lr}, min_lr={cfg.min_lr}, warmup_epochs={cfg.warmup_epochs})"

        def after(step: int) -> float:
            span = max(total - warm, 1)
            return floor + (base - floor) * (1 + math.cos(math.pi * min(step - warm, span) / span)) / 2
    elif cfg.sched == "linear":
        text = f"Linear(lr={cfg.lr} -> 0, warmup_epochs={cfg.warmup_epochs})"

        def after(step: int) -> float:
            span = max(total - warm, 1)
            return base * max(1.0 - (step - warm) / span, 0.0)
    elif cfg.sched == "step":
        milestones = sorted(cfg.step_epochs)
        text = f"Step(lr={cfg.lr}, epochs={list(cfg.step_epochs)}, gamma={cfg.step_gamma})"

        def after(step: int) -> float:
            epoch = step // steps_per_epoch
            passed = sum(1 for m in milestones if m <= epoch)
            return max(base * cfg.step_gamma**passed, floor)
    else:  # pragma: no cover - pydantic restricts the names
        raise ValueError(cfg.sched)
    return Warmup(base, warm, cfg.warmup_start_factor, momentum, after, text)
