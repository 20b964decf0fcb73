"""The one object through which the engine reports progress (nothing below cli/ prints)."""

from __future__ import annotations

from typing import Any

from cifarbench.engine.records import EpochRecord, RunInfo, RunSummary


class Reporter:
    """Default: silent. The CLI passes a rich or plain-text implementation.

    In-epoch progress costs a device synchronisation per event, so the trainer sends
    ``step_progress`` only to a reporter that asks for it, at most every ``progress_every_s``
    seconds or ``progress_every_steps`` steps (None/0: never). Its dict: epoch, epochs, step, steps
    (of this epoch), images_per_s, loss, acc (running, this epoch; None if the backend cannot read
    them), lr, elapsed_s, epoch_eta_s, run_eta_s, eta_includes_eval.

    The calls, in order: ``start`` (a RunInfo), then per epoch ``epoch_begin``, ``step_progress``
    events, ``epoch_end`` (an EpochRecord), and ``finish`` (the RunSummary); ``message``, ``warning``
    and ``download_progress`` at any time.
    """

    progress_every_s: float | None = None
    progress_every_steps: int | None = None

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def start(self, info: RunInfo) -> None: ...

    def epoch_begin(self, epoch: int, steps: int) -> None: ...

    def step_progress(self, progress: dict[str, Any]) -> None: ...

    def epoch_end(self, record: EpochRecord) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...

    def download_progress(self, name: str, done: int, total: int | None) -> None: ...


class RecordingReporter(Reporter):
    """Keeps everything it is told (tests, and bench's training mode)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.info: RunInfo | None = None
        self.records: list[EpochRecord] = []
        self.summary: RunSummary | None = None

    def message(self, text: str) -> None:
        self.messages.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def start(self, info: RunInfo) -> None:
        self.info = info

    def epoch_end(self, record: EpochRecord) -> None:
        self.records.append(record)

    def finish(self, summary: RunSummary) -> None:
        self.summary = summary
