"""Throughput mode: warm-up (timed on its own: compilation, autotuning, first allocations), then
repeated timed windows of steady-state training steps and of evaluation.

Phases are timed separately: ``data`` (moving the arrays to the device once, and each window's
upload of order/augmentation draws), ``step`` (the training steps of a window, ending with
``end_epoch``, which synchronises) and ``eval`` (``predict`` over the eval images). Images/s of
a window = images / wall time of whole steps; min/median/max over the windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifarbench.backends.base import STEP_PHASES, Backend
from cifarbench.bench.matrix import Case
from cifarbench.bench.timing import Clock, timed
from cifarbench.config import RunConfig
from cifarbench.engine.metrics import summarize
from cifarbench.models.summary import cost_per_image
from cifarbench.engine.session import augmentation, optim_config, training_backend, train_options
from cifarbench.errors import UsageError
from cifarbench.models import create_spec

# Shapes for --synthetic (images, channels, classes): the shape of the data set named by --dataset.
SYNTHETIC_SHAPES = {"mnist": (28, 1, 10), "fashion-mnist": (28, 1, 10), "cifar100": (32, 3, 100)}


@dataclass
class Windows:
    warmup_steps: int = 5
    steps: int = 20
    repeats: int = 5
    eval_batch_size: int = 1000
    phase_steps: int = 0  # steps timed phase by phase (data, forward, backward, optimizer); 0: none

    def check(self) -> None:
        if self.warmup_steps < 0 or self.steps < 1 or self.repeats < 1 or self.eval_batch_size < 1:
            raise UsageError("--warmup-steps must be >= 0; --steps, --repeats and --eval-batch-size >= 1")
        if self.phase_steps < 0:
            raise UsageError("--phase-steps must be >= 0 (0: no per-phase timing)")


@dataclass
class BenchData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    channels: int
    num_classes: int
    source: str


def bench_data(cfg: RunConfig, synthetic: bool, n_train: int, n_eval: int) -> BenchData:
    """The first n_train/n_eval images of the data set (repeated if it is smaller), or synthetic ones."""
    from cifarbench.data import load_dataset, make_synthetic

    if synthetic:
        size, ch, classes = SYNTHETIC_SHAPES.get(cfg.dataset, (32, 3, 10))
        ds = make_synthetic(n_train, n_eval, classes, size, ch, seed=cfg.seed)
        mean, std = (0.5,) * ch, (0.25,) * ch
    else:
        from cifarbench.engine.session import normalization

        ds = load_dataset(cfg.dataset, cfg.data_dir)
        mean, std = normalization(cfg, ds)
    take = lambda a, n: a[np.arange(n) % len(a)]  # noqa: E731 - cycling keeps any n valid
    return BenchData(take(ds.x_train, n_train), take(ds.y_train, n_train), take(ds.x_test, n_eval),
                     take(ds.y_test, n_eval), tuple(mean), tuple(std), ds.image_size, ds.channels,
                     ds.num_classes, "synthetic" if synthetic else ds.name)


def _window(backend: Backend, rng: np.random.Generator, n: int, steps: int, bs: int, lr: float, mom: float,
            clock: Clock, augment: tuple[int, bool]) -> tuple[float, float, Any]:
    """(upload seconds, step seconds, epoch stats) for one window of ``steps`` steps."""
    from cifarbench.data.augment import draw_epoch

    order, offsets, flips = draw_epoch(rng, n, *augment)
    _, t_data = timed(backend, lambda: backend.begin_epoch(order, offsets, flips, int(rng.integers(2**31))), clock)

    def run() -> Any:
        for i in range(steps):
            backend.train_step(i * bs, (i + 1) * bs, lr, mom)
        return backend.end_epoch()

    stats, t_step = timed(backend, run, clock)
    return t_data, t_step, stats


def measure(backend: Backend, data: BenchData, batch_size: int, win: Windows, lr: float, momentum: float,
            seed: int = 0, clock: Clock = time.perf_counter, progress=None,
            augment: tuple[int, bool] = (0, False)) -> dict[str, Any]:
    """Time an already built backend (model and optimizer configured) on these arrays; ``progress``
    (a one-line callback) hears each phase as it ends, outside the timed regions; ``augment``: the
    recipe's (crop padding, flip), engine.session.augmentation."""
    win.check()
    say = progress or (lambda _text: None)
    n = len(data.y_train)
    if n < batch_size * max(win.steps, win.warmup_steps):
        raise UsageError(f"bench data has {n} images; a window needs {batch_size * max(win.steps, win.warmup_steps)}")
    rng = np.random.default_rng(seed)

    def upload() -> None:
        backend.set_data("train", data.x_train, data.y_train)
        backend.set_data("test", data.x_eval, data.y_eval)

    _, data_s = timed(backend, upload, clock)
    warm_s = 0.0
    if win.warmup_steps:
        say(f"  warm-up: {win.warmup_steps} steps of {batch_size} ...")
        t_d, t_s, _ = _window(backend, rng, n, win.warmup_steps, batch_size, lr, momentum, clock, augment)
        warm_s = t_d + t_s
        say(f"  warm-up done in {warm_s:.3g} s; evaluation warm-up on {len(data.y_eval):,} images ...")
    _, eval_warm_s = timed(backend, lambda: backend.predict("test", win.eval_batch_size), clock)
    uploads, steps_s, eval_s, losses = [], [], [], []
    for _ in range(win.repeats):
        t_d, t_s, stats = _window(backend, rng, n, win.steps, batch_size, lr, momentum, clock, augment)
        uploads.append(t_d)
        steps_s.append(t_s)
        losses.append(stats.loss_sum / max(stats.count, 1))
        _, t_e = timed(backend, lambda: backend.predict("test", win.eval_batch_size), clock)
        eval_s.append(t_e)
        ips = win.steps * batch_size / t_s if t_s > 0 else math.inf
        say(f"  window {len(steps_s)}/{win.repeats}: train {ips:,.3g} img/s ({t_s:.3g} s), "
            f"eval {len(data.y_eval) / t_e if t_e > 0 else math.inf:,.3g} img/s")
    images = win.steps * batch_size
    phases = _phase_window(backend, rng, n, win, batch_size, lr, momentum, clock, say) if win.phase_steps else {}
    return {
        "data_s": data_s, "epoch_upload_s": summarize(uploads), "warmup_s": warm_s, "eval_warmup_s": eval_warm_s,
        "train_window_s": summarize(steps_s), "eval_window_s": summarize(eval_s),
        "train_ips": summarize([images / t if t > 0 else math.inf for t in steps_s]),
        "eval_ips": summarize([len(data.y_eval) / t if t > 0 else math.inf for t in eval_s]),
        "step_ms": 1000 * float(np.median(steps_s)) / win.steps,
        "train_loss_last": losses[-1], "images_per_window": images, "eval_images": len(data.y_eval),
        "fused_step_s": summarize([t / win.steps for t in steps_s]), **phases,
    }


def _phase_window(backend: Backend, rng: np.random.Generator, n: int, win: Windows, bs: int, lr: float, mom: float,
                  clock: Clock, say) -> dict[str, Any]:
    """``win.phase_steps`` steps through ``Backend.phase_step`` (after one untimed step: the phases' own
    compilation), after the timed windows so they are not disturbed: per phase, seconds per batch."""
    from cifarbench.data.augment import draw_epoch

    if not backend.can_time_phases():
        return {"phase_skipped": f"backend '{backend.name}' does not time the phases of a step"}
    steps = win.phase_steps
    order, offsets, flips = draw_epoch(rng, n, backend.options.crop_pad, backend.options.flip)
    backend.begin_epoch(order, offsets, flips, int(rng.integers(2**31)))
    say(f"  step phases: {steps} steps timed phase by phase ...")
    per: dict[str, list[float]] = {p: [] for p in STEP_PHASES}
    for i in range(steps + 1):
        start = (i % max(n // bs, 1)) * bs
        times = backend.phase_step(start, start + bs, lr, mom, clock)
        if i:  # the first: compilation of the phase functions, dropped as mikecvet dropped his first sample
            for p in STEP_PHASES:
                per[p].append(times[p])
    backend.end_epoch()
    out: dict[str, Any] = {f"phase_{p}_s": summarize(v) for p, v in per.items()}
    out["phase_sum_s"] = summarize([sum(t) for t in zip(*per.values())])
    out["phase_backprop_s"] = summarize([b + o for b, o in zip(per["backward"], per["optimizer"])])  # mikecvet's
    out["phase_steps"] = steps
    return out


def run_case(case: Case, cfg: RunConfig, data: BenchData, win: Windows, clock: Clock = time.perf_counter,
             progress=None) -> dict[str, Any]:
    """Create, build and time one backend/device/model/precision/batch-size combination, with the
    recipe's own initial weights (data_init) and parameter groups, as ``cifarbench train`` builds it."""
    spec = create_spec(case.model, data.channels, cfg.image_size or data.image_size, data.num_classes)  # --image-size
    options = train_options(cfg, data.mean, data.std, case.precision)
    case_cfg = cfg.model_copy(update={"backend": case.backend, "device": case.device, "model": case.model})
    backend = training_backend(case_cfg, spec, options, data.x_train)
    momentum = optim_config(cfg, spec).initial_momentum
    result = measure(backend, data, case.batch_size, win, cfg.lr, momentum, cfg.seed, clock, progress,
                     augmentation(cfg))
    return {**case.as_dict(), "device_name": backend.describe(), "params": spec.num_params(), **cost_per_image(spec), **result}
