"""Reporters for the terminal: a rich live table on a TTY, plain lines otherwise."""

from __future__ import annotations

import time
from typing import Any

from rich.live import Live
from rich.table import Table

from cifarbench.cli._console import err_console, info, warn
from cifarbench.engine.reporter import Reporter

COLUMNS = ("epoch", "loss", "train acc", "eval acc", "images/s", "time (s)", "lr")


def _row(r: dict[str, Any], epochs: int) -> tuple[str, ...]:
    return (
        f"{r['epoch']}/{epochs}", f"{r['train_loss']:.4f}", f"{r['train_acc']:.4f}",
        f"{r['eval_acc']:.4f} ({r['eval_split']})", f"{r['images_per_s']:,.0f}", f"{r['epoch_time_s']:.2f}",
        f"{r['lr']:.3g}",
    )


def header_lines(i: dict[str, Any]) -> list[str]:
    return [i["recipe"]] * bool(i.get("recipe")) + [
        f"model {i['model']} ({i['params']:,} parameters) on {i['dataset']}: "
        f"{i['train_images']:,} train / {i['eval_images']:,} {i['eval_split']} images",
        f"backend {i['device_name']}, {i['precision']}, batch {i['batch_size']}, "
        f"{i['epochs']} epochs x {i['steps_per_epoch']} steps -> {i['run_dir']}",
    ]


class PlainReporter(Reporter):
    """One line per event, for logs and pipes."""

    def __init__(self) -> None:
        self.epochs = 0

    def message(self, text: str) -> None:
        info(text)

    def warning(self, text: str) -> None:
        warn(text)

    def start(self, i: dict[str, Any]) -> None:
        self.epochs = i["epochs"]
        for line in header_lines(i):
            info(line)
        if i.get("start_epoch"):
            info(f"resuming after epoch {i['start_epoch']}")

    def epoch_end(self, r: dict[str, Any]) -> None:
        cells = _row(r, self.epochs)
        info(" | ".join(f"{name} {val}" for name, val in zip(COLUMNS, cells)))

    def finish(self, s: dict[str, Any]) -> None:
        info(
            f"test accuracy {s['test_accuracy']:.4f} (loss {s['test_loss']:.4f}) after {s['epochs']} epochs, "
            f"{s['total_time_s']:.1f} s in all"
            + (f" (warm-up {s['warmup_s']:.1f} s)" if s.get("warmup_s") else "")
            + f"; checkpoint {s['checkpoint']}"
        )

    def download_progress(self, name: str, done: int, total: int | None) -> None:
        if total and done >= total:
            info(f"downloaded {name} ({total / 1e6:.1f} MB)")


class RichReporter(PlainReporter):
    """A live table that grows by one row per epoch, with a ticking 'running' row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, ...]] = []
        self.live: Live | None = None
        self.current = ""
        self.t_epoch = 0.0

    def _table(self) -> Table:
        table = Table(*COLUMNS, title=None, header_style="bold")
        for row in self.rows:
            table.add_row(*row)
        if self.current:
            table.add_row(self.current, f"[dim]running {time.perf_counter() - self.t_epoch:.0f} s[/]", *[""] * 5)
        return table

    def start(self, i: dict[str, Any]) -> None:
        super().start(i)
        self.live = Live(self._table(), console=err_console, refresh_per_second=2, get_renderable=self._table)
        self.live.start()

    def epoch_begin(self, epoch: int, steps: int) -> None:
        self.current = f"{epoch}/{self.epochs}"
        self.t_epoch = time.perf_counter()

    def epoch_end(self, r: dict[str, Any]) -> None:
        self.rows.append(_row(r, self.epochs))
        self.current = ""

    def finish(self, s: dict[str, Any]) -> None:
        self.close()
        super().finish(s)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def make_reporter() -> PlainReporter:
    return RichReporter() if err_console.is_terminal else PlainReporter()
