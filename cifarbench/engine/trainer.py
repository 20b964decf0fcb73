"""The training loop: config -> data -> backend -> epochs -> metrics and checkpoints.

One loop for every backend. The engine draws the data order and augmentation (seeded per
epoch, so a resumed run replays the same draws), computes the schedule, times whole phases
after synchronising the device, evaluates on the validation split (or the test set when no
split is held out) and commits a checkpoint generation after each epoch (cifarbench.checkpoint).

The run directory is locked for the whole run (engine.rundir). A checkpoint holds everything the
metrics need too: the epoch rows so far, and the sums of a partly trained epoch, so a run
interrupted anywhere (mid-epoch, during evaluation) and resumed writes the rows an
uninterrupted run writes. A non-finite loss stops the run (exit 1) before it is saved.

The parts: engine.epoch (one epoch's steps and evaluation), engine.runstate (checkpoint
generations, metrics files, the resume point), engine.summary (the run's summary and run_log.json);
what they measure travels as the typed records of engine.records.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench import atomic
from cifarbench import checkpoint as ckpt
from cifarbench.config import RunConfig, dump_config
from cifarbench.engine import distributed, rundir, runstate, tta
from cifarbench.engine.epoch import EpochSteps, epoch_seed, evaluate_epoch
from cifarbench.engine.interrupts import StopRequests
from cifarbench.engine.metrics import evaluate_logits
from cifarbench.engine.progress import RunPlan
from cifarbench.engine.records import EpochRecord, EpochTrain, RunInfo, RunSummary
from cifarbench.engine.reporter import Reporter
from cifarbench.engine.schedules import DropoutSchedule, make_schedule
from cifarbench.engine.session import normalization, train_options, training_backend
from cifarbench.engine.summary import run_summary, write_run_log
from cifarbench.errors import CifarbenchError, UsageError
from cifarbench.models import create_spec
from cifarbench.models.spec import ModuleSpec, dropout_rates

__all__ = ["Trainer", "Diverged", "normalization", "train_options", "epoch_seed"]


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_ds = cfg.dataset.replace(":", "-").replace("/", "_")[-40:]
    return Path("runs") / f"{cfg.model.replace(':', '-')}-{safe_ds}-{cfg.backend}-{stamp}"


class Diverged(CifarbenchError):
    """A non-finite loss: the run stops (exit 1) and keeps its last finite checkpoint."""


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    eval_name: str  # "val" or "test"


def _own_rate(spec) -> float | None:
    """The model's dropout rate when it has one (the largest of its layers'), for the metrics."""
    rates = dropout_rates(spec)
    return max(rates) if rates else None


class Trainer:
    def __init__(self, cfg: RunConfig, reporter: Reporter | None = None, run_dir: Path | None = None,
                 resume: bool = False, write: bool = True, overwrite: bool = False, recipe: str | None = None,
                 step_log: bool = True):
        self.cfg = cfg
        self.recipe = recipe  # the resolved recipe in one line, shown at the start
        self.rep = reporter or Reporter()
        self.run_dir = Path(run_dir) if run_dir else (Path(cfg.output) if cfg.output else default_run_dir(cfg))
        self.resume = resume
        self.overwrite = overwrite
        self.dist = distributed.detect()  # under torchrun: this rank; None in a plain run
        self.write = write and (self.dist is None or self.dist.is_main)  # rank 0 alone writes
        self.records: list[EpochRecord] = []
        # steps.jsonl: a light per-step log (engine/progress.py: ~10 rows per epoch), when the run writes
        self.step_log = step_log and self.write
        self.step_records: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.start_step_in_epoch = 0
        self.resumed_partial: EpochTrain | None = None  # the part of start_epoch trained before the resume
        self.best: dict[str, Any] | None = None  # {"epoch", "eval_acc"} of best/ (validation only)
        self.stop = StopRequests()
        self._committed: tuple[int, int] | None = None  # the position of the last checkpoint written

    # ----- set-up ----------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self._validate_names()
        from cifarbench.data import load_dataset, split_validation, stratified_subset

        self.ds = load_dataset(cfg.dataset, cfg.data_dir, progress=self.rep.download_progress)
        for w in getattr(self.ds, "warnings", []) or []:
            self.rep.warning(w)
        if cfg.val_split >= len(self.ds.y_train):
            raise UsageError(f"--val-split {cfg.val_split} leaves no training data ({len(self.ds.y_train)} images)")
        if len(self.ds.y_test) == 0:
            raise UsageError(f"the test split of {cfg.dataset} is empty: nothing to evaluate on")
        if cfg.val_split:
            xt, yt, xv, yv = split_validation(self.ds.x_train, self.ds.y_train, cfg.val_split, cfg.seed)
            self.splits = Splits(xt, yt, xv, yv, "val")
        else:
            self.splits = Splits(self.ds.x_train, self.ds.y_train, self.ds.x_test, self.ds.y_test, "test")
        self._apply_limits(stratified_subset)
        self.spec = create_spec(cfg.model, self.ds.channels, cfg.image_size or self.ds.image_size, self.ds.num_classes)
        self.mean, self.std = normalization(cfg, self.ds)
        self.options = train_options(cfg, self.mean, self.std)
        state, opt_state = self._load_resume_state() if self.resume else (None, None)
        if cfg.pretrained and state is None:
            from cifarbench.models.pretrained import pretrained_state

            state = pretrained_state(self.spec, cfg.seed, progress=self.rep.download_progress, note=self.rep.message)
        self.backend = training_backend(cfg, self.spec, self.options, self.splits.x_train, state, opt_state, self.dist)
        self.backend.set_data("train", self.splits.x_train, self.splits.y_train)
        self.backend.set_data(self.splits.eval_name, self.splits.x_eval, self.splits.y_eval)
        if self.splits.eval_name == "val":
            self.backend.set_data("test", self.x_test, self.y_test)
        self.tta_plan = tta.upload(self.backend, "test", self.x_test, self.y_test, cfg.tta)
        if cfg.lookahead_every:
            self.backend.lookahead(None)  # the slow weights start here (a resumed run restarts them)
        n = len(self.splits.y_train)
        self.steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
        # --max-steps caps the run: the schedule spans the capped length, the last epoch may be partial
        self.total_steps = min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or 10**18)
        self.epochs = -(-self.total_steps // self.steps_per_epoch)
        self.schedule = make_schedule(cfg, self.steps_per_epoch, self.total_steps)
        self.steps = EpochSteps(cfg, self.backend, self.schedule, self.steps_per_epoch, self.total_steps, n,
                                self.stop, self.rep, distributed=self.dist is not None,
                                step_log=self.step_records if self.step_log else None)
        self.dropout_plan = self._dropout_plan()
        self.dropout_now: float | None = None  # the rate set on the backend (None: the spec's own)

    def _dropout_plan(self) -> DropoutSchedule | None:
        """--dropout-rate / --dropout-schedule, or None when the model's own rates stand."""
        cfg = self.cfg
        if cfg.dropout_rate is None and cfg.dropout_schedule == "none":
            return None
        own = dropout_rates(self.spec)
        if not own and not isinstance(self.spec, ModuleSpec):
            self.rep.warning(f"{cfg.model} has no Dropout layer: --dropout-rate/--dropout-schedule change nothing")
            return None
        initial = cfg.dropout_rate if cfg.dropout_rate is not None else max(own, default=0.0)
        return DropoutSchedule(cfg.dropout_schedule, initial, cfg.min_dropout, cfg.max_dropout, cfg.epochs,
                               cfg.dropout_patience)

    def _apply_dropout(self, epoch: int) -> None:
        """The epoch's dropout rate (from the evaluations of the epochs before it) onto the backend."""
        if self.dropout_plan is None:
            return
        rate = self.dropout_plan.rates([r.eval_acc for r in self.records[:epoch]])[-1]
        if rate == self.dropout_now:
            return
        if self.dropout_now is not None:
            self.rep.message(f"epoch {epoch + 1}: dropout rate {self.dropout_now:.3f} -> {rate:.3f} "
                             f"({self.cfg.dropout_schedule})")
        self.backend.set_dropout(rate)
        self.dropout_now = rate
        self.steps.seen_batches.clear()  # a compiled step traces again on the new rate: time it apart

    def _apply_limits(self, subset) -> None:
        """--limit-train / --limit-eval: seeded, class-stratified subsets (the final test's too)."""
        cfg, s = self.cfg, self.splits
        s.x_train, s.y_train = subset(s.x_train, s.y_train, cfg.limit_train, cfg.seed)
        s.x_eval, s.y_eval = subset(s.x_eval, s.y_eval, cfg.limit_eval, cfg.seed)
        if s.eval_name == "test":
            self.x_test, self.y_test = s.x_eval, s.y_eval
        else:
            self.x_test, self.y_test = subset(self.ds.x_test, self.ds.y_test, cfg.limit_eval, cfg.seed)

    def _validate_names(self) -> None:
        """Fail on a bad model or backend name before spending time on the data."""
        from cifarbench.backends import check_distributed, load_backend_class, resolve
        from cifarbench.models.registry import check_runs_on

        backend = resolve(self.cfg.backend, self.cfg.device)[0]
        if self.dist is not None:
            check_distributed(self.cfg.backend, self.cfg.device)
        check_runs_on(self.cfg.model, backend)
        load_backend_class(backend)
        if self.cfg.pretrained:
            from cifarbench.models.pretrained import weight_file

            weight_file(self.cfg.model)  # a model without published weights: exit 2 before any download

    def _load_resume_state(self):
        point = runstate.load_resume_point(self.run_dir, self.spec, self.rep.warning)
        self.start_epoch, self.start_step_in_epoch = point.epoch, point.step_in_epoch
        self.resumed_partial, self.best, self.records = point.partial, point.best, point.records
        self._committed = (self.start_epoch, self.start_step_in_epoch)
        self.step_records[:] = point.step_records  # committed with the rows, as one unit
        return point.state, point.opt_state

    # ----- the loop --------------------------------------------------------------------
    def run(self) -> RunSummary:
        lock = rundir.RunDirLock(self.run_dir) if self.write else None
        with self.stop:
            self._validate_names()  # a bad name fails before the run directory is made
            if lock is not None:
                rundir.refuse_existing(self.run_dir, self.resume, self.overwrite)
                lock.acquire()  # before anything is read or written: a second process stops here
            try:
                if self.write:
                    for name in rundir.prepare(self.run_dir, self.resume, self.overwrite):
                        self.rep.message(f"removed a leftover temp file: {name}")
                return self._run()
            finally:
                if lock is not None:
                    lock.release()

    def _run(self) -> RunSummary:
        self.setup()
        self.rep.start(self._info())
        if self.write:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.run_dir / "config.yaml", dump_config(self.cfg))
            self._write_metrics()  # rows past the checkpoint (from a killed run) go
        t_run = time.perf_counter()
        elapsed_before = self.records[-1].elapsed_s if self.records else 0.0
        epoch = self.start_epoch
        self.steps.at(self.start_step_in_epoch)  # the interrupt point: the step about to run
        try:
            for epoch in range(self.start_epoch, self.epochs):
                self._epoch(epoch, elapsed_before - t_run)
        except KeyboardInterrupt:
            if self.write:
                self._save_interrupted(epoch)
            raise
        summary = self._final(time.perf_counter() - t_run + elapsed_before)
        self.rep.finish(summary)
        return summary

    def _epoch(self, epoch: int, clock_offset: float) -> None:
        """Train, evaluate, report and commit one epoch; ``clock_offset + perf_counter()``: the run's elapsed."""
        first = self.start_step_in_epoch if epoch == self.start_epoch else 0
        self.steps.at(first)
        self._apply_dropout(epoch)
        before = self.resumed_partial if epoch == self.start_epoch else None
        trained = self.steps.train(epoch, first, before, self.epochs, self._plan(epoch))
        self.steps.at(self.steps_per_epoch, trained)  # trained; evaluation pending
        self.stop.check()  # a stop that came during the epoch's last step or its end
        self._check_finite(epoch, trained.mean_loss)
        elapsed = clock_offset + time.perf_counter()
        if trained.warmup_s > 0:
            self.rep.message(f"warm-up (first step of each batch size: compile/JIT/autotune): "
                             f"{trained.warmup_s:.2f} s, excluded from images/s")
        dropout = self.dropout_now if self.dropout_plan else _own_rate(self.spec)
        rec = evaluate_epoch(self.backend, epoch, trained, self.splits.eval_name, self.splits.y_eval,
                             self.ds.class_names, self.cfg.eval_batch_size, dropout, elapsed)
        self._check_finite(epoch, rec.eval_loss)
        self.records.append(rec)
        self.rep.epoch_end(rec)
        best = self._is_best(rec)
        last = epoch + 1 == self.epochs
        with self.stop.deferred():  # a stop waits for the commit
            if self.write and ((epoch + 1) % self.cfg.save_every == 0 or last or best):
                self._save(epoch + 1, 0, best=best)
            self._write_metrics()
        self.steps.at(0)
        self.stop.check()

    def _save_interrupted(self, epoch: int) -> None:
        done = bool(self.records) and self.records[-1].epoch == epoch + 1  # stopped after the epoch's row
        pos, part = ((epoch + 1, 0), None) if done else ((epoch, self.steps.next_step), self.steps.partial)
        if part is not None and not math.isfinite(part.loss_sum):
            self.rep.warning("interrupted: not saved, the loss is already non-finite; the last checkpoint is kept")
            return
        if self._committed != pos:
            try:
                self._save(*pos, partial=part)
            except KeyboardInterrupt:
                self.rep.warning("interrupted again: the save was abandoned; the last complete checkpoint is kept")
                raise
        self.rep.warning(f"interrupted: resumable checkpoint in {self.run_dir} (cifarbench train --resume {self.run_dir})")

    def _check_finite(self, epoch: int, loss: float) -> None:
        if not math.isfinite(loss):
            kept = f"; the last finite checkpoint stays in {self.run_dir}" if ckpt.has_checkpoint(self.run_dir) else ""
            raise Diverged(f"diverged at epoch {epoch + 1} (loss {loss}): lower --lr",
                           hint=f"nothing of epoch {epoch + 1} was saved{kept}" if self.write else None)

    def _is_best(self, rec: EpochRecord) -> bool:
        """Model selection on the validation split only, never on the test set."""
        if rec.eval_split != "val" or (self.best is not None and rec.eval_acc <= self.best["eval_acc"]):
            return False
        self.best = {"epoch": rec.epoch, "eval_acc": rec.eval_acc}
        return True

    def _plan(self, epoch: int) -> RunPlan:
        """The rest of the run after this epoch, for the run's ETA."""
        after = max(self.total_steps - (epoch + 1) * self.steps_per_epoch, 0)
        eval_s = self.records[-1].eval_time_s if self.records else None
        return RunPlan(steps_after=after, evals_left=self.epochs - epoch + 1, eval_s=eval_s)

    # ----- outputs ---------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return ckpt.model_metadata(
            self.cfg.model, self.cfg.dataset, self.ds.num_classes, self.ds.channels, self.spec.image_size,
            self.ds.class_names, self.mean, self.std, self.cfg.backend, self.options.resize,
        )

    def _save(self, epoch: int, step_in_epoch: int, partial: EpochTrain | None = None, best: bool = False) -> None:
        runstate.save_generation(
            self.run_dir, self.backend, self._meta(), self.cfg, epoch, step_in_epoch,
            global_step=min(epoch * self.steps_per_epoch + step_in_epoch, self.total_steps),
            finished=epoch >= self.epochs, records=self.records, partial=partial, best=self.best, is_best=best,
            step_records=self.step_records)
        self._committed = (epoch, step_in_epoch)

    def _write_metrics(self) -> None:
        if self.write:
            runstate.write_metrics(self.run_dir, self.records, self.step_records if self.step_log else None)

    def _info(self) -> RunInfo:
        cfg = self.cfg
        return RunInfo(
            model=cfg.model, params=self.spec.num_params(), dataset=cfg.dataset,
            train_images=len(self.splits.y_train), eval_split=self.splits.eval_name,
            eval_images=len(self.splits.y_eval), test_images=len(self.y_test),
            backend=cfg.backend, device=self.backend.device, device_name=self.backend.describe(),
            precision=cfg.precision, epochs=self.epochs, batch_size=cfg.batch_size,
            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps, start_epoch=self.start_epoch,
            start_step=self.start_epoch * self.steps_per_epoch + self.start_step_in_epoch,  # where a resume goes on
            run_dir=str(self.run_dir), writes=self.write, recipe=self.recipe,
        )

    def _final(self, total_time: float) -> RunSummary:
        t0 = time.perf_counter()
        logits = tta.predict(self.backend, self.tta_plan, self.cfg.eval_batch_size)  # tta 0: plain "test"
        test = evaluate_logits(logits, self.y_test, self.ds.class_names)
        test_time = time.perf_counter() - t0
        summary = run_summary(self._info(), self.records, test, total_time + test_time,
                              str(self.run_dir / ckpt.WEIGHTS) if self.write else None, self.ds.class_names,
                              self.cfg.seed, self.spec, test_time_s=test_time)
        if self.write:
            write_run_log(self.run_dir, self.cfg, summary, self.backend)
        return summary
