"""One epoch: its training steps (seeded draws, warm-up timed apart, stops at step boundaries)
and its evaluation, which turns what the steps measured into an EpochRecord.

``EpochSteps.next_step`` always names the step about to run and ``partial`` the part of the epoch
trained so far: together they are the point an interrupted run saves and resumes from.
"""

from __future__ import annotations

import time

import numpy as np

from cifarbench import atomic
from cifarbench.config import RunConfig
from cifarbench.engine.interrupts import StopRequests
from cifarbench.engine.metrics import evaluate_logits
from cifarbench.engine.progress import RunPlan, StepProgress
from cifarbench.engine.records import EpochRecord, EpochTrain
from cifarbench.engine.reporter import Reporter
from cifarbench.engine.session import augmentation
from cifarbench.engine.tricks import lookahead_decay


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch) for dropout and data draws."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSteps:
    """The training phase of each epoch of one run, on one backend."""

    def __init__(self, cfg: RunConfig, backend, schedule, steps_per_epoch: int, total_steps: int, n_train: int,
                 stop: StopRequests, reporter: Reporter, distributed: bool = False, step_log: list | None = None):
        self.cfg, self.backend, self.schedule, self.stop, self.rep = cfg, backend, schedule, stop, reporter
        self.steps_per_epoch, self.total_steps, self.n = steps_per_epoch, total_steps, n_train
        self.distributed = distributed  # under torchrun end_epoch is a collective: an interrupt saves no sums
        self.step_log = step_log  # steps.jsonl's rows (engine/progress.py appends them), or None
        self.seen_batches: set[int] = set()  # batch sizes stepped already (a new one compiles/autotunes)
        self.next_step = 0
        self.partial: EpochTrain | None = None

    def at(self, next_step: int, partial: EpochTrain | None = None) -> None:
        self.next_step, self.partial = next_step, partial

    def last_step(self, epoch: int) -> int:
        """The end of this epoch's steps (--max-steps may cut the last epoch short)."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def train(self, epoch: int, first_step: int, before: EpochTrain | None, epochs: int, plan: RunPlan) -> EpochTrain:
        """Steps ``first_step``.. of ``epoch`` (0-based), added to ``before`` (the part trained before a resume).

        A stop request is taken at a step boundary; the part trained so far goes to ``self.partial``.
        """
        from cifarbench.data.augment import alternate_flips, draw_epoch

        cfg, b, n, bs = self.cfg, self.backend, self.n, self.cfg.batch_size
        rng = np.random.default_rng(epoch_seed(cfg.seed, epoch))
        order, offsets, flips = draw_epoch(rng, n, *augmentation(cfg))
        if flips is not None and cfg.flip_mode == "alternate":
            flips = alternate_flips(cfg.seed, order, epoch, n)
        base, last_step = epoch * self.steps_per_epoch, self.last_step(epoch)
        self.rep.epoch_begin(epoch + 1, last_step)
        b.synchronize()
        t0 = time.perf_counter()
        b.begin_epoch(order, offsets, flips, epoch_seed(cfg.seed + 1, epoch))
        progress = StepProgress(self.rep, b, epoch + 1, epochs, first_step, last_step, bs, plan,
                                step_log=self.step_log, steps_per_epoch=self.steps_per_epoch, global_base=base)
        lr = mom = 0.0
        warm_s, warm_images, warm_steps = 0.0, 0, 0

        def so_far(stats) -> EpochTrain:
            images = min(self.next_step * bs, n) - min(first_step * bs, n)
            part = EpochTrain(loss_sum=stats.loss_sum, correct=stats.correct, count=stats.count,
                              seconds=time.perf_counter() - t0, lr=lr, momentum=mom, images=images,
                              warmup_s=warm_s, warmup_images=warm_images)
            return before + part if before is not None else part

        try:
            with self.stop.deferred():
                for i in range(first_step, last_step):
                    self.next_step = i
                    lr, mom = self.schedule(base + i)
                    start, stop = i * bs, min((i + 1) * bs, n)
                    if stop - start in self.seen_batches:
                        b.train_step(start, stop, lr, mom)
                    else:  # first step of this batch shape: compile/JIT/autotune run here, timed apart
                        warm_s += self._timed_step(start, stop, lr, mom)
                        warm_images += stop - start
                        warm_steps += 1
                    decay = lookahead_decay(base + i + 1, self.total_steps, cfg.lookahead_every, cfg.lookahead_decay)
                    if decay is not None:
                        b.lookahead(decay)
                    self.next_step = i + 1
                    progress.tick(i + 1, lr, warm_s, warm_steps)  # reads the device sums only when an event is due
                    atomic.kill_point("step")
                    self.stop.check()
                self.next_step = last_step
                stats = b.end_epoch()  # synchronises
        except KeyboardInterrupt:
            if not self.distributed:
                self.partial = so_far(b.end_epoch())
            raise
        return so_far(stats)

    def _timed_step(self, start: int, stop: int, lr: float, mom: float) -> float:
        """One synchronised, timed step (the warm-up of a new batch shape)."""
        b = self.backend
        b.synchronize()
        t0 = time.perf_counter()
        b.train_step(start, stop, lr, mom)
        b.synchronize()
        self.seen_batches.add(stop - start)
        return time.perf_counter() - t0


def evaluate_epoch(backend, epoch: int, trained: EpochTrain, split: str, y_eval: np.ndarray, class_names,
                   eval_batch_size: int, dropout: float | None, elapsed: float) -> EpochRecord:
    """Evaluate on ``split`` and make the epoch's record; ``elapsed``: the run's seconds before the evaluation."""
    t0 = time.perf_counter()
    atomic.kill_point("eval")
    ev = evaluate_logits(backend.predict(split, eval_batch_size), y_eval, class_names)
    eval_time = time.perf_counter() - t0
    count = max(trained.count, 1)
    return EpochRecord(
        epoch=epoch + 1, train_loss=trained.loss_sum / count, train_acc=trained.correct / count, eval_split=split,
        eval_loss=ev["loss"], eval_acc=ev["accuracy"], lr=trained.lr, momentum=trained.momentum, dropout=dropout,
        train_images=trained.images, images_per_s=trained.steady_images_per_s(), train_time_s=trained.seconds,
        eval_time_s=eval_time, epoch_time_s=trained.seconds + eval_time, elapsed_s=elapsed + eval_time,
        warmup_s=trained.warmup_s,
    )
