"""The one object through which the engine reports progress (nothing below cli/ prints)."""

from __future__ import annotations

from typing import Any


class Reporter:
    """Default: silent. The CLI passes a rich or plain-text implementation."""

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def start(self, info: dict[str, Any]) -> None: ...

    def epoch_begin(self, epoch: int, steps: int) -> None: ...

    def epoch_end(self, record: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...

    def download_progress(self, name: str, done: int, total: int | None) -> None: ...


class RecordingReporter(Reporter):
    """Keeps everything it is told (tests, and bench's training mode)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.info: dict[str, Any] = {}
        self.records: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def message(self, text: str) -> None:
        self.messages.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def start(self, info: dict[str, Any]) -> None:
        self.info = info

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def finish(self, summary: dict[str, Any]) -> None:
        self.summary = summary
