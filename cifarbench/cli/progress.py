"""Reporters for the terminal: finished epochs above a live progress footer on a TTY, plain lines
otherwise (every ``--log-interval``), and a quiet one (warnings and the final line only)."""

from __future__ import annotations

import math
import re
from typing import Any

from rich.markup import escape

from cifarbench.cli._console import err_console, info, warn
from cifarbench.engine.records import EpochRecord, RunInfo, RunSummary
from cifarbench.engine.reporter import Reporter
from cifarbench.errors import UsageError
from cifarbench.report.tables import sig

COLUMNS = ("epoch", "loss", "train acc", "eval acc", "images/s", "time (s)", "lr")
WIDTHS = (7, 8, 9, 16, 10, 9, 9)  # fixed, so rows printed one at a time line up under one header
DEFAULT_LOG_INTERVAL = "10%,30s"


def _row(r: EpochRecord, epochs: int) -> tuple[str, ...]:
    return (
        f"{r.epoch}/{epochs}", f"{r.train_loss:.4f}", f"{100 * r.train_acc:.2f}%",
        f"{100 * r.eval_acc:.2f}% ({r.eval_split})", sig(r.images_per_s), f"{r.epoch_time_s:.2f}", f"{r.lr:.3g}",
    )


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(c.rjust(w) for c, w in zip(cells, WIDTHS))


def duration(seconds: float | None) -> str:
    """45s, 3m05s, 2h14m: short enough for a progress line."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def progress_fields(p: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) of a step_progress event, shared by the plain line and the live footer."""
    pct = 100.0 * p["step"] / p["steps"] if p["steps"] else 100.0
    loss = "-" if p["loss"] is None else f"{p['loss']:.4f}"
    acc = "-" if p["acc"] is None else f"{100 * p['acc']:.2f}%"
    run_eta = duration(p["run_eta_s"]) + ("" if p["eta_includes_eval"] else "+eval")
    return [
        ("epoch", f"{p['epoch']}/{p['epochs']}"), ("step", f"{p['step']}/{p['steps']} ({pct:.0f}%)"),
        ("loss", loss), ("acc", acc), ("images/s", sig(p["images_per_s"])), ("lr", f"{p['lr']:.3g}"),
        ("epoch ETA", duration(p["epoch_eta_s"])), ("run ETA", run_eta),
    ]


def parse_log_interval(text: str) -> tuple[int | None, float | None, float | None]:
    """'10%,30s' -> (steps, fraction of an epoch, seconds); each part is N (steps), N% or Ns."""
    steps = frac = secs = None
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|s|steps?)?", part)
        if not m or float(m.group(1)) <= 0:
            raise UsageError(f"--log-interval: cannot read '{part}'",
                             hint="give N steps, N% of an epoch or Ns seconds, comma-separated (default 10%,30s)")
        value, unit = float(m.group(1)), m.group(2) or "steps"
        if unit == "%":
            frac = value / 100.0
        elif unit == "s":
            secs = value
        else:
            steps = int(value)
    if steps is None and frac is None and secs is None:
        raise UsageError("--log-interval is empty", hint="e.g. 10%, 30s, 50 or 10%,30s")
    return steps, frac, secs


def header_lines(i: RunInfo) -> list[str]:
    steps = f"{i.epochs} epoch{'s' if i.epochs != 1 else ''} x {i.steps_per_epoch} steps"
    if i.total_steps != i.epochs * i.steps_per_epoch:
        steps += f", capped at {i.total_steps} steps"
    return ([i.recipe] if i.recipe else []) + [
        f"model {i.model} ({i.params:,} parameters) on {i.dataset}: "
        f"{i.train_images:,} train / {i.eval_images:,} {i.eval_split} images",
        f"backend {i.device_name}, {i.precision}, batch {i.batch_size}, {steps} -> "
        + (i.run_dir if i.writes else "nothing written (give -o DIR to keep it)"),
    ]


def final_line(s: RunSummary) -> str:
    return (
        f"test accuracy {100 * s.test_accuracy:.2f}% (loss {s.test_loss:.4f}) after {s.epochs} "
        f"epoch{'s' if s.epochs != 1 else ''}, "
        f"{s.total_time_s:.1f} s in all"
        + (f" (warm-up {s.warmup_s:.1f} s)" if s.warmup_s else "")
        + (f"; checkpoint {s.checkpoint}" if s.checkpoint else "; nothing written")
    )


class PlainReporter(Reporter):
    """One line per event, for logs and pipes; inside an epoch a line every ``log_interval``."""

    def __init__(self, log_interval: str = DEFAULT_LOG_INTERVAL) -> None:
        self.epochs = 0
        self._every_steps, self._every_frac, self._every_s = parse_log_interval(log_interval)

    def message(self, text: str) -> None:
        info(escape(text))

    def warning(self, text: str) -> None:
        warn(text)

    def start(self, i: RunInfo) -> None:
        self.epochs = i.epochs
        for line in header_lines(i):
            info(escape(line))
        if i.start_epoch:
            info(f"resuming after epoch {i.start_epoch}")

    def epoch_begin(self, epoch: int, steps: int) -> None:
        every = [n for n in (self._every_steps, self._every_frac and math.ceil(self._every_frac * steps)) if n]
        self.progress_every_steps = max(min(every), 1) if every else None
        self.progress_every_s = self._every_s

    def step_progress(self, p: dict[str, Any]) -> None:
        if p["step"] < p["steps"]:  # the epoch's last step is followed at once by its epoch line
            info(" | ".join(f"{k} {v}" for k, v in progress_fields(p)))

    def epoch_end(self, r: EpochRecord) -> None:
        cells = _row(r, self.epochs)
        info(" | ".join(f"{name} {val}" for name, val in zip(COLUMNS, cells)))

    def finish(self, s: RunSummary) -> None:
        info(escape(final_line(s)))

    def download_progress(self, name: str, done: int, total: int | None) -> None:
        if done == 0:
            info(f"downloading {escape(name)} ...")
        elif total and done >= total:
            info(f"downloaded {escape(name)} ({total / 1e6:.1f} MB)")


class QuietReporter(PlainReporter):
    """--quiet: warnings and the final line only."""

    def message(self, text: str) -> None: ...

    def start(self, i: RunInfo) -> None:
        self.epochs = i.epochs

    def epoch_begin(self, epoch: int, steps: int) -> None: ...

    def epoch_end(self, r: EpochRecord) -> None: ...

    def download_progress(self, name: str, done: int, total: int | None) -> None: ...


class RichReporter(PlainReporter):
    """Finished epochs are printed as rows above a live footer (so the newest row is always on
    screen, however many epochs): a progress bar of the current epoch with speed, running loss and
    accuracy, lr and the ETAs of the epoch and of the run."""

    progress_every_s = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.progress = None
        self.task = None
        self.downloads = None

    def epoch_begin(self, epoch: int, steps: int) -> None:
        self.progress_every_s, self.progress_every_steps = 0.5, None
        self._footer()
        self.progress.reset(self.task, total=steps, completed=0, visible=True,  # the clock restarts too
                            epoch=f"{epoch}/{self.epochs}", stats="[dim]starting...[/]")

    def _footer(self) -> None:
        if self.progress is not None:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}[/]"), BarColumn(bar_width=24),
            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TextColumn("{task.fields[stats]}"),
            console=err_console, refresh_per_second=4, transient=True,
        )
        self.task = self.progress.add_task("train", total=1, epoch="", stats="", visible=False)
        self.progress.start()

    def start(self, i: RunInfo) -> None:
        self._stop_downloads()
        super().start(i)
        info(f"[bold]{escape(_line(COLUMNS))}[/]")

    def step_progress(self, p: dict[str, Any]) -> None:
        if self.progress is None:
            return
        f = dict(progress_fields(p))
        if p["step"] >= p["steps"]:
            stats = f"loss {f['loss']}  acc {f['acc']}  {f['images/s']} img/s  [dim]evaluating...[/]"
        else:
            stats = (f"loss {f['loss']}  acc {f['acc']}  {f['images/s']} img/s  lr {f['lr']}  "
                     f"ETA {f['epoch ETA']}  run {escape(f['run ETA'])}")
        self.progress.update(self.task, completed=p["step"], stats=stats)

    def epoch_end(self, r: EpochRecord) -> None:
        row = _line(_row(r, self.epochs))
        if self.progress is not None:
            self.progress.console.print(escape(row), highlight=False)  # above the footer
            self.progress.update(self.task, visible=False)
        else:
            info(escape(row))

    def finish(self, s: RunSummary) -> None:
        self.close()
        super().finish(s)

    def download_progress(self, name: str, done: int, total: int | None) -> None:
        if self.downloads is None:
            from cifarbench.cli.data_cmd import _DownloadBars

            self.downloads = _DownloadBars().__enter__()
        self.downloads(name, done, total)

    def _stop_downloads(self) -> None:
        if self.downloads is not None:
            self.downloads.__exit__(None, None, None)
            self.downloads = None

    def close(self) -> None:
        self._stop_downloads()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def make_reporter(quiet: bool = False, log_interval: str | None = None) -> PlainReporter:
    interval = log_interval or DEFAULT_LOG_INTERVAL
    if quiet:
        return QuietReporter(interval)
    if err_console.is_terminal:
        parse_log_interval(interval)  # a bad value is an error on a TTY too
        return RichReporter()
    return PlainReporter(interval)
