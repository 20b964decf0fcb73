"""run_bench: expand the matrix, run every case in one mode, pick the baseline, assemble the result.

The result is a plain dict (written as bench.json) holding the settings, the rows, the
combinations that did not run and why, and the machine's fingerprint.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from cifarbench.bench import throughput, training
from cifarbench.bench.matrix import Case, expand
from cifarbench.config import build_config
from cifarbench.engine.reporter import Reporter
from cifarbench.errors import CifarbenchError, UsageError
from cifarbench.report.writers import RESULT_KIND

RESULT_VERSION = 1
MEANING = {
    "throughput": "median training images/s divided by the baseline's (higher is faster; the table says "
                  "'N x faster/slower' than the baseline)",
    "training": "the baseline's mean total training time divided by this row's (speed-up; higher is faster; the "
                "table says 'N x faster/slower' than the baseline)",
}


@dataclass
class BenchSettings:
    backends: Optional[list[str]] = None  # None: every registered backend
    devices: Optional[list[str]] = None  # None/auto: each backend's best usable device; "all": every usable one
    models: Optional[list[str]] = None  # None: the config's model
    precisions: Optional[list[str]] = None
    batch_sizes: Optional[list[int]] = None
    config_file: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)  # RunConfig fields (dataset, data_dir, lr, ...)
    synthetic: bool = False
    warmup_steps: int = 5
    steps: int = 20
    repeats: int = 5
    eval_batch_size: Optional[int] = None
    epochs: Optional[int] = None  # set: training mode
    seeds: int = 1
    target_acc: Optional[float] = None
    baseline: Optional[str] = None  # "fastest" (default), "slowest", "first", or backend[:device[:model[:precision[:batch]]]]
    eval_images: Optional[int] = None  # throughput: images per timed evaluation (default: one training window's)
    phase_steps: Optional[int] = None  # throughput: steps timed phase by phase (default: --steps; 0: none)

    @property
    def mode(self) -> str:
        return "training" if self.epochs else "throughput"


def _matches(selector: str, case: dict[str, Any]) -> bool:
    parts = [p for p in selector.replace("/", ":").split(":") if p]
    fields = [case["backend"], case["device"], case["model"], case["precision"], f"{case['batch_size']}"]
    return all(p in (f, f"bs{f}") for p, f in zip(parts, fields))


def _check_baseline(selector: Optional[str], cases: list[Case]) -> None:
    if selector in (None, "fastest", "slowest", "first") or not cases:
        return
    if not any(_matches(selector, c.as_dict()) for c in cases):
        raise UsageError(f"--baseline {selector} matches none of: {', '.join(c.label for c in cases)}")


def apply_baseline(rows: list[dict[str, Any]], mode: str, selector: Optional[str]) -> Optional[str]:
    """Set ``relative`` on every row; returns the baseline's label (None when no row ran)."""
    if not rows:
        return None
    if mode == "training":
        speed = lambda r: 1.0 / r["total_time_s"]["mean"]  # noqa: E731
    else:
        speed = lambda r: r["train_ips"]["median"]  # noqa: E731
    if selector in (None, "fastest"):
        base = max(rows, key=speed)
    elif selector == "slowest":
        base = min(rows, key=speed)
    elif selector == "first":
        base = rows[0]
    else:
        base = next(r for r in rows if _matches(selector, r))
    for r in rows:
        r["relative"] = speed(r) / speed(base)
        r["baseline"] = r is base
    return Case(base["backend"], base["device"], base["model"], base["precision"], base["batch_size"]).label


def _base_config(s: BenchSettings):
    cfg = build_config(s.config_file, s.overrides)
    if s.epochs:
        cfg.epochs = s.epochs
    return cfg


def run_bench(s: BenchSettings, reporter: Reporter | None = None, out_dir: Path | None = None,
              clock=time.perf_counter) -> dict[str, Any]:
    from cifarbench import fingerprint

    rep = reporter or Reporter()
    if s.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if s.target_acc is not None and not 0 < s.target_acc <= 1:
        raise UsageError("--target-acc is a fraction in (0, 1], e.g. 0.9")
    cfg = _base_config(s)
    cases, skipped = expand(s.backends, s.devices, s.models or [cfg.model], s.precisions or [cfg.precision],
                            s.batch_sizes or [cfg.batch_size])
    _check_baseline(s.baseline, cases)
    rows: list[dict[str, Any]] = []
    runner = (_training_runner(s, cfg, rep, out_dir) if s.mode == "training"
              else _throughput_runner(s, cfg, cases, clock, rep.message))
    for i, case in enumerate(cases, 1):
        rep.message(f"[{i}/{len(cases)}] {case.label}")
        try:
            rows.append(runner(case))
        except CifarbenchError as exc:
            skipped.append({**case.as_dict(), "reason": exc.message})
            rep.warning(f"{case.label}: {exc.message}")
        except (RuntimeError, MemoryError, ValueError) as exc:  # e.g. out of device memory: keep the others
            skipped.append({**case.as_dict(), "reason": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            rep.warning(f"{case.label} failed: {type(exc).__name__}: {exc}")
    baseline = apply_baseline(rows, s.mode, s.baseline)
    fp = fingerprint.collect()
    return {
        "kind": RESULT_KIND, "version": RESULT_VERSION, "mode": s.mode,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": _settings_dict(s, cfg), "config": cfg.model_dump(mode="json"),
        "rows": rows, "skipped": skipped, "baseline": baseline, "relative_meaning": MEANING[s.mode],
        "fingerprint_id": fp["fingerprint_id"], "fingerprint": fp,
    }


def _settings_dict(s: BenchSettings, cfg) -> dict[str, Any]:
    d = asdict(s)
    d.update(mode=s.mode, dataset="synthetic" if s.synthetic else cfg.dataset,
             eval_batch_size=s.eval_batch_size or cfg.eval_batch_size,
             baseline=s.baseline or "fastest")
    if s.mode == "training":
        for k in ("warmup_steps", "steps", "repeats", "phase_steps"):
            d.pop(k)
    return d


def _throughput_runner(s: BenchSettings, cfg, cases: list[Case], clock, progress=None):
    win = throughput.Windows(s.warmup_steps, s.steps, s.repeats, s.eval_batch_size or cfg.eval_batch_size,
                             s.steps if s.phase_steps is None else s.phase_steps)
    win.check()
    biggest = max((c.batch_size for c in cases), default=1)
    n_train = biggest * max(s.steps, s.warmup_steps)
    n_eval = eval_images(s, biggest)
    data = throughput.bench_data(cfg, s.synthetic, n_train, n_eval) if cases else None
    return lambda case: throughput.run_case(case, cfg, data, win, clock, progress)


def eval_images(s: BenchSettings, biggest_batch: int) -> int:
    """--eval-images, else as many images as one timed training window (steps x the largest batch), at most 10,000:
    a short --steps run evaluates briefly too."""
    if s.eval_images is not None:
        if s.eval_images < 1:
            raise UsageError("--eval-images must be at least 1")
        return s.eval_images
    return min(s.steps * biggest_batch, 10000)


def _training_runner(s: BenchSettings, cfg, rep: Reporter, out_dir: Path | None):
    overrides = dict(s.overrides, epochs=cfg.epochs)
    if s.synthetic:
        overrides["dataset"] = "synthetic"
    if s.eval_batch_size:
        overrides["eval_batch_size"] = s.eval_batch_size
    seeds = [cfg.seed + k for k in range(s.seeds)]
    return lambda case: training.run_case(case, s.config_file, overrides, seeds, s.target_acc, rep, out_dir)
