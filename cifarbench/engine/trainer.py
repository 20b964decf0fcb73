"""The training loop: config -> data -> backend -> epochs -> metrics and checkpoints.

One loop for every backend. The engine draws the data order and augmentation (seeded per
epoch, so a resumed run replays the same draws), computes the schedule, times whole phases
after synchronising the device, evaluates on the validation split (or the test set when no
split is held out) and commits a checkpoint generation after each epoch (cifarbench.checkpoint).

The run directory is locked for the whole run (engine.rundir). A checkpoint holds everything the
metrics need too: the epoch rows so far, and the sums of a partly trained epoch, so a run
interrupted anywhere (mid-epoch, during evaluation) and resumed writes the rows an
uninterrupted run writes. A non-finite loss stops the run (exit 1) before it is saved.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench import atomic
from cifarbench import checkpoint as ckpt
from cifarbench.config import RunConfig, dump_config
from cifarbench.engine import distributed, rundir, tta
from cifarbench.engine.interrupts import StopRequests
from cifarbench.engine.metrics import evaluate_logits
from cifarbench.engine.progress import RunPlan, StepProgress
from cifarbench.engine.reporter import Reporter
from cifarbench.engine.schedules import DropoutSchedule, make_schedule
from cifarbench.engine.session import normalization, train_options, training_backend
from cifarbench.engine.tricks import lookahead_decay
from cifarbench.errors import CifarbenchError, UsageError
from cifarbench.models import create_spec
from cifarbench.models.spec import ModuleSpec, dropout_rates

__all__ = ["Trainer", "normalization", "train_options", "epoch_seed"]

METRIC_FIELDS = (
    "epoch", "train_loss", "train_acc", "eval_split", "eval_loss", "eval_acc", "lr", "momentum", "dropout",
    "images_per_s", "train_time_s", "eval_time_s", "epoch_time_s", "elapsed_s", "warmup_s",
)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch) for dropout and data draws."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_ds = cfg.dataset.replace(":", "-").replace("/", "_")[-40:]
    return Path("runs") / f"{cfg.model.replace(':', '-')}-{safe_ds}-{cfg.backend}-{stamp}"


@dataclass
class EpochTrain:
    """What one epoch's training phase measured (the evaluation adds the rest of the record).

    Saved in a mid-epoch checkpoint and added to what the resumed part measures.
    """

    loss_sum: float  # over the samples trained
    correct: int
    count: int
    seconds: float  # wall time of the phase, device synchronised at both ends
    lr: float  # of the last step
    momentum: float
    images: int  # trained in the phase
    warmup_s: float  # first steps of new batch sizes (compile/JIT), timed apart
    warmup_images: int

    def __add__(self, later: "EpochTrain") -> "EpochTrain":
        last = later if later.images else self
        return EpochTrain(self.loss_sum + later.loss_sum, self.correct + later.correct, self.count + later.count,
                          self.seconds + later.seconds, last.lr, last.momentum, self.images + later.images,
                          self.warmup_s + later.warmup_s, self.warmup_images + later.warmup_images)


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
        self.records: list[dict[str, Any]] = []
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
        self.spec = create_spec(cfg.model, self.ds.channels, self.ds.image_size, self.ds.num_classes)
        self.mean, self.std = normalization(cfg, self.ds)
        self.options = train_options(cfg, self.mean, self.std)
        state, opt_state = self._load_resume_state() if self.resume else (None, None)
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
        self._seen_batches: set[int] = set()  # batch sizes stepped already (a new one compiles/autotunes)
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
        rate = self.dropout_plan.rates([r["eval_acc"] for r in self.records[:epoch]])[-1]
        if rate == self.dropout_now:
            return
        if self.dropout_now is not None:
            self.rep.message(f"epoch {epoch + 1}: dropout rate {self.dropout_now:.3f} -> {rate:.3f} "
                             f"({self.cfg.dropout_schedule})")
        self.backend.set_dropout(rate)
        self.dropout_now = rate
        self._seen_batches.clear()  # a compiled step traces again on the new rate: time it apart

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

    def _load_resume_state(self):
        loaded = ckpt.load_checkpoint(self.run_dir)  # the newest complete generation, verified
        for note in loaded.notes:
            self.rep.warning(note)
        ckpt.check_compatible(loaded.state, self.spec, str(self.run_dir))
        side = loaded.sidecar
        try:
            self.start_epoch = int(side.get("epoch", 0))
            self.start_step_in_epoch = int(side.get("step_in_epoch", 0))
            if side.get("partial_epoch"):
                self.resumed_partial = EpochTrain(**side["partial_epoch"])
            self.best = side.get("best")
        except (TypeError, ValueError) as exc:
            raise ckpt.CheckpointError(f"corrupt {loaded.run_dir / ckpt.SIDECAR}: {exc}") from None
        self._committed = (self.start_epoch, self.start_step_in_epoch)
        self.step_records = list(side.get("step_records") or [])  # committed with the rows, as one unit
        if "records" in side:  # the rows committed with this checkpoint
            self.records = list(side["records"])
        else:  # written before checkpoints held their rows
            metrics = self.run_dir / "metrics.jsonl"
            if metrics.is_file():
                rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
                self.records = [r for r in rows if r["epoch"] <= self.start_epoch]
            if self.start_step_in_epoch:
                self.rep.warning(f"this checkpoint predates saved partial epochs: epoch {self.start_epoch + 1}'s "
                                 "train loss/accuracy will count only the steps after the resume")
        return loaded.state, ckpt.load_optimizer_state(loaded.run_dir)

    # ----- the loop --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
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

    def _run(self) -> dict[str, Any]:
        self.setup()
        cfg = self.cfg
        info = self._info()
        self.rep.start(info)
        if self.write:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.run_dir / "config.yaml", dump_config(cfg))
            self._write_metrics()  # rows past the checkpoint (from a killed run) go
        t_run = time.perf_counter()
        elapsed_before = self.records[-1]["elapsed_s"] if self.records else 0.0
        epoch = self.start_epoch
        self._next_step = self.start_step_in_epoch  # the interrupt point: the step about to run
        self._partial: EpochTrain | None = None  # the epoch trained so far, when interrupted
        try:
            for epoch in range(self.start_epoch, self.epochs):
                first = self.start_step_in_epoch if epoch == self.start_epoch else 0
                self._next_step, self._partial = first, None
                self._apply_dropout(epoch)
                trained = self._train_epoch(epoch, first)
                self._partial, self._next_step = trained, self.steps_per_epoch  # trained; evaluation pending
                self.stop.check()  # a stop that came during the epoch's last step or its end
                self._check_finite(epoch, trained.loss_sum / max(trained.count, 1))
                rec = self._finish_epoch(epoch, trained, elapsed_before + time.perf_counter() - t_run)
                self._check_finite(epoch, rec["eval_loss"])
                self.records.append(rec)
                self.rep.epoch_end(rec)
                best = self._is_best(rec)
                last = epoch + 1 == self.epochs
                with self.stop.deferred():  # a stop waits for the commit
                    if self.write and ((epoch + 1) % cfg.save_every == 0 or last or best):
                        self._save(epoch + 1, 0, best=best)
                    self._write_metrics()
                self._partial = None
                self._next_step = 0
                self.stop.check()
        except KeyboardInterrupt:
            if self.write:
                self._save_interrupted(epoch)
            raise
        summary = self._final(time.perf_counter() - t_run + elapsed_before)
        self.rep.finish(summary)
        return summary

    def _save_interrupted(self, epoch: int) -> None:
        done = bool(self.records) and self.records[-1]["epoch"] == epoch + 1  # stopped after the epoch's row
        pos, part = ((epoch + 1, 0), None) if done else ((epoch, self._next_step), self._partial)
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

    def _is_best(self, rec: dict[str, Any]) -> bool:
        """Model selection on the validation split only, never on the test set."""
        if rec["eval_split"] != "val" or (self.best is not None and rec["eval_acc"] <= self.best["eval_acc"]):
            return False
        self.best = {"epoch": rec["epoch"], "eval_acc": rec["eval_acc"]}
        return True

    def _train_epoch(self, epoch: int, first_step: int) -> EpochTrain:
        """Steps ``first_step``.. of this epoch; ``self._next_step`` always names the step about to run.

        A stop request is taken at a step boundary; the part trained so far goes to ``self._partial``.
        """
        from cifarbench.data.augment import alternate_flips, draw_epoch

        cfg, b = self.cfg, self.backend
        n = len(self.splits.y_train)
        rng = np.random.default_rng(epoch_seed(cfg.seed, epoch))
        order, offsets, flips = draw_epoch(rng, n, self.options.crop_pad, self.options.flip)
        if flips is not None and cfg.flip_mode == "alternate":
            flips = alternate_flips(cfg.seed, order, epoch, n)
        base = epoch * self.steps_per_epoch
        last_step = min(self.steps_per_epoch, self.total_steps - base)
        self.rep.epoch_begin(epoch + 1, last_step)
        b.synchronize()
        t0 = time.perf_counter()
        b.begin_epoch(order, offsets, flips, epoch_seed(cfg.seed + 1, epoch))
        base = epoch * self.steps_per_epoch
        before = self.resumed_partial if epoch == self.start_epoch else None
        progress = StepProgress(self.rep, b, epoch + 1, self.epochs, first_step, last_step, cfg.batch_size,
                                self._plan(epoch), step_log=self.step_records if self.step_log else None,
                                steps_per_epoch=self.steps_per_epoch, global_base=base)
        lr = mom = 0.0
        warm_s, warm_images, warm_steps = 0.0, 0, 0

        def so_far(stats) -> EpochTrain:
            images = min(self._next_step * cfg.batch_size, n) - min(first_step * cfg.batch_size, n)
            part = EpochTrain(stats.loss_sum, stats.correct, stats.count, time.perf_counter() - t0, lr, mom,
                              images, warm_s, warm_images)
            return before + part if before is not None else part

        try:
            with self.stop.deferred():
                for i in range(first_step, last_step):
                    self._next_step = i
                    lr, mom = self.schedule(base + i)
                    start, stop = i * cfg.batch_size, min((i + 1) * cfg.batch_size, n)
                    if stop - start in self._seen_batches:
                        b.train_step(start, stop, lr, mom)
                    else:  # first step of this batch shape: compile/JIT/autotune run here, timed apart
                        warm_s += self._timed_step(start, stop, lr, mom)
                        warm_images += stop - start
                        warm_steps += 1
                    decay = lookahead_decay(base + i + 1, self.total_steps, cfg.lookahead_every, cfg.lookahead_decay)
                    if decay is not None:
                        b.lookahead(decay)
                    self._next_step = i + 1
                    progress.tick(i + 1, lr, warm_s, warm_steps)  # reads the device sums only when an event is due
                    atomic.kill_point("step")
                    self.stop.check()
                self._next_step = last_step
                stats = b.end_epoch()  # synchronises
        except KeyboardInterrupt:
            if self.dist is None:  # (under torchrun end_epoch is a collective: the sums are not saved)
                self._partial = so_far(b.end_epoch())
            raise
        return so_far(stats)

    def _plan(self, epoch: int) -> RunPlan:
        """The rest of the run after this epoch, for the run's ETA."""
        after = max(self.total_steps - (epoch + 1) * self.steps_per_epoch, 0)
        eval_s = self.records[-1]["eval_time_s"] if self.records else None
        return RunPlan(steps_after=after, evals_left=self.epochs - epoch + 1, eval_s=eval_s)

    def _timed_step(self, start: int, stop: int, lr: float, mom: float) -> float:
        """One synchronised, timed step (the warm-up of a new batch shape)."""
        b = self.backend
        b.synchronize()
        t0 = time.perf_counter()
        b.train_step(start, stop, lr, mom)
        b.synchronize()
        self._seen_batches.add(stop - start)
        return time.perf_counter() - t0

    def _finish_epoch(self, epoch: int, trained: EpochTrain, elapsed: float) -> dict[str, Any]:
        train_time, lr, mom = trained.seconds, trained.lr, trained.momentum
        images, warm_s, warm_images = trained.images, trained.warmup_s, trained.warmup_images
        if warm_s > 0:
            self.rep.message(f"warm-up (first step of each batch size: compile/JIT/autotune): {warm_s:.2f} s, "
                             "excluded from images/s")
        # images/s over the steady steps; an epoch made only of warm-up steps keeps the plain ratio
        steady_images, steady_time = images, train_time
        if images > warm_images:
            steady_images, steady_time = images - warm_images, train_time - warm_s
        t0 = time.perf_counter()
        atomic.kill_point("eval")
        logits = self.backend.predict(self.splits.eval_name, self.cfg.eval_batch_size)
        ev = evaluate_logits(logits, self.splits.y_eval, self.ds.class_names)
        eval_time = time.perf_counter() - t0
        count = max(trained.count, 1)
        return {
            "epoch": epoch + 1, "train_loss": trained.loss_sum / count, "train_acc": trained.correct / count,
            "eval_split": self.splits.eval_name, "eval_loss": ev["loss"], "eval_acc": ev["accuracy"],
            "lr": lr, "momentum": mom, "dropout": self.dropout_now if self.dropout_plan else _own_rate(self.spec),
            "train_images": images, "images_per_s": steady_images / steady_time if steady_time > 0 else 0.0,
            "train_time_s": train_time, "eval_time_s": eval_time, "epoch_time_s": train_time + eval_time,
            "elapsed_s": elapsed + eval_time, "warmup_s": warm_s,
        }

    # ----- outputs ---------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return ckpt.model_metadata(
            self.cfg.model, self.cfg.dataset, self.ds.num_classes, self.ds.channels, self.ds.image_size,
            self.ds.class_names, self.mean, self.std, self.cfg.backend,
        )

    def _save(self, epoch: int, step_in_epoch: int, partial: EpochTrain | None = None, best: bool = False) -> None:
        """One checkpoint generation: weights, optimizer, position, the rows so far, a partial epoch."""
        side = {
            "epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": min(epoch * self.steps_per_epoch + step_in_epoch, self.total_steps), "epochs": self.cfg.epochs,
            "finished": epoch >= self.epochs, "config": self.cfg.model_dump(mode="json"),
            "saved_at": datetime.now().isoformat(timespec="seconds"),
            "records": self.records, "step_records": self.step_records,
            "partial_epoch": asdict(partial) if partial is not None else None,
            "best": self.best,
        }
        ckpt.save_checkpoint(self.run_dir, self.backend.state_dict(), self._meta(), self.backend.optimizer_state(),
                             side, keep=self.cfg.keep_checkpoints, best=best)
        self._committed = (epoch, step_in_epoch)

    def _write_metrics(self) -> None:
        if not self.write:
            return
        atomic.write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        atomic.kill_point("metrics")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.records)
        atomic.write_text(self.run_dir / "metrics.csv", buf.getvalue())
        if self.step_log:
            atomic.kill_point("steps")
            atomic.write_text(self.run_dir / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in self.step_records))

    def _info(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model": cfg.model, "params": self.spec.num_params(), "dataset": cfg.dataset,
            "train_images": len(self.splits.y_train), "eval_split": self.splits.eval_name,
            "eval_images": len(self.splits.y_eval), "test_images": len(self.y_test),
            "backend": cfg.backend, "device": self.backend.device, "device_name": self.backend.describe(),
            "precision": cfg.precision, "epochs": self.epochs, "batch_size": cfg.batch_size,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, "start_epoch": self.start_epoch,
            "run_dir": str(self.run_dir), "writes": self.write, "recipe": self.recipe,
        }

    def _final(self, total_time: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        logits = tta.predict(self.backend, self.tta_plan, self.cfg.eval_batch_size)  # tta 0: plain "test"
        test = evaluate_logits(logits, self.y_test, self.ds.class_names)
        test_time = time.perf_counter() - t0
        last = self.records[-1] if self.records else {}
        ips = [r["images_per_s"] for r in self.records]
        steady = ips[1:] if len(ips) > 1 else ips
        summary = {
            **self._info(),
            "total_time_s": total_time + test_time,
            "train_time_s": sum(r["train_time_s"] for r in self.records),
            "time_per_epoch_s": float(np.mean([r["epoch_time_s"] for r in self.records])) if self.records else None,
            "images_per_s": float(np.median(steady)) if steady else None,
            "warmup_s": sum(r.get("warmup_s", 0.0) for r in self.records),
            "final_train_loss": last.get("train_loss"), "final_train_acc": last.get("train_acc"),
            "final_val_acc": last.get("eval_acc") if self.splits.eval_name == "val" else None,
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "test": test, "test_time_s": test_time,
            "checkpoint": str(self.run_dir / ckpt.WEIGHTS) if self.write else None,
            "class_names": list(self.ds.class_names), "seed": self.cfg.seed,
            **self._cost(),
        }
        if self.write:
            self._write_run_log(summary)
        return summary

    def _cost(self) -> dict[str, Any]:
        """Forward MACs and training FLOPs per image (models.summary), and the training PFLOPs of the
        run, as airbench reports them; None for another library's modules (tv:)."""
        from cifarbench.models.summary import cost_per_image

        cost = cost_per_image(self.spec)
        images = sum(int(r.get("train_images") or 0) for r in self.records)  # trained, resumed parts included
        per_image = cost["train_flops_per_image"]
        return {**cost, "train_pflops": None if per_image is None else per_image * images / 1e15}

    def _write_run_log(self, summary: dict[str, Any]) -> None:
        try:
            from cifarbench.fingerprint import training_run_log
        except ImportError:
            log = {"config": self.cfg.model_dump(mode="json"), "results": summary}
        else:
            log = training_run_log(self.cfg, summary, self.backend)
        atomic.write_json(self.run_dir / "run_log.json", log)
