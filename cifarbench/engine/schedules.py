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


@dataclass(frozen=True)
class DropoutSchedule:
    """definfo's dynamic dropout, per epoch: ``none`` keeps ``initial``; ``linear_decay`` and
    ``cosine_decay`` go from ``initial`` toward ``min_rate`` with progress = epoch / epochs;
    ``adaptive`` uses ``initial * 0.9`` after an epoch whose evaluation accuracy beat the best so
    far, ``initial * 1.2`` after ``patience`` epochs without one, else ``initial``. Every rate is
    clamped to [min_rate, max_rate] and a change of 0.01 or less is ignored. As in definfo the rate
    is computed after an epoch from that epoch's index, so it lags one epoch (epoch e + 1 trains
    with the rate of progress e / epochs); the accuracy is the run's evaluation split (the
    validation split with ``--val-split``; definfo used the test set)."""

    strategy: str
    initial: float
    min_rate: float
    max_rate: float
    epochs: int
    patience: int = 5

    def rates(self, accuracies) -> list[float]:
        """The rate of epochs 0..len(accuracies), given the evaluation accuracy after each finished epoch.
        A pure function of the history, so a resumed run recomputes the same rates."""
        rate, best, plateau = self.initial, 0.0, 0
        out = [rate]
        for epoch, acc in enumerate(accuracies):
            progress = epoch / self.epochs
            if self.strategy == "linear_decay":
                new = self.initial * (1 - progress) + self.min_rate * progress
            elif self.strategy == "cosine_decay":
                new = self.min_rate + (self.initial - self.min_rate) * (1 + math.cos(math.pi * progress)) / 2
            elif self.strategy == "adaptive":
                if acc > best:
                    best, plateau = acc, 0
                    new = max(self.initial * 0.9, self.min_rate)
                else:
                    plateau += 1
                    new = min(self.initial * 1.2, self.max_rate) if plateau >= self.patience else self.initial
            else:
                new = self.initial
            new = max(self.min_rate, min(new, self.max_rate))
            if abs(new - rate) > 0.01:
                rate = new
            out.append(rate)
        return out

    def describe(self) -> str:
        return (f"DynamicDropout({self.strategy}, initial={self.initial}, min={self.min_rate}, max={self.max_rate})")


def make_schedule(cfg, steps_per_epoch: int, total_steps: int | None = None) -> Schedule:
    """Build the schedule of a RunConfig (cifarbench.config) for this many steps per epoch;
    ``total_steps`` (a run capped by max_steps) replaces epochs x steps_per_epoch as its length."""
    total = total_steps if total_steps is not None else cfg.epochs * steps_per_epoch
    from cifarbench.backends.base import initial_momentum

    momentum = initial_momentum(cfg.opt, cfg.momentum, cfg.betas)
    if cfg.sched == "onecycle":
        return OneCycle(
            max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor, cycle_momentum=cfg.cycle_momentum,
            # OneCycleLR overwrites SGD's momentum or Adam's beta1 with max_momentum, for every optimizer
            base_momentum=cfg.base_momentum, max_momentum=cfg.max_momentum,
        )
    if cfg.sched == "triangle":
        return Triangle(cfg.lr, total, cfg.pct_start, cfg.warmup_start_factor, cfg.final_lr_factor, momentum)
    # clip in epochs first: a huge finite --warmup-epochs (1e308) must not overflow to inf
    warm = min(int(round(min(cfg.warmup_epochs, cfg.epochs) * steps_per_epoch)), total)
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
        text = f"Linear(lr={cfg.lr}, min_lr={cfg.min_lr}, warmup_epochs={cfg.warmup_epochs})"

        def after(step: int) -> float:  # definfo's linear decay, per step: lr at the warm-up's end, 0 at the run's
            span = max(total - warm, 1)
            return max(base * (1 - min(step - warm, span) / span), floor)
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
