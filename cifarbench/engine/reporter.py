"""The one object through which the engine reports progress (nothing below cli/ prints)."""

from __future__ import annotations

from typing import Any

from cifarbench.engine.progress import Cadence
from cifarbench.engine.records import EpochRecord, RunInfo, RunSummary


class Reporter:
    """Default: silent. The CLI passes a rich or plain-text implementation.

    In-epoch progress costs a device synchronisation per event, so the trainer sends
    ``step_progress`` only to a reporter that asks for it, at most every ``progress_every_s``
    seconds or ``progress_every_steps`` steps (None/0: never). Its dict: epoch, epochs, step, steps
    (of this epoch), images_per_s, loss, acc (running, this epoch; None if the backend cannot read
    them), samples (the count behind loss/acc, or None), lr, elapsed_s, epoch_eta_s, run_eta_s,
    eta_includes_eval.

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


class _Due:
    """When one sink of a Tee wants its next ``step_progress`` (its own steps/seconds cadence)."""

    def __init__(self, sink: Reporter, clock) -> None:
        self.sink, self.clock = sink, clock
        self.reset()

    def reset(self) -> None:
        self.every_steps = getattr(self.sink, "progress_every_steps", None)
        self.every_s = getattr(self.sink, "progress_every_s", None)
        self.cadence = Cadence(self.every_steps, self.every_s, 0, self.clock())

    @property
    def wants(self) -> bool:
        return bool(self.every_steps or self.every_s)

    def due(self, p: dict[str, Any]) -> bool:
        if not self.wants:
            return False
        now = self.clock()
        hit = p["step"] >= p["steps"] or self.cadence.due(p["step"], now)
        if hit:
            self.cadence.taken(p["step"], now)
        return hit


class Tee(Reporter):
    """One reporter for the engine, many sinks: the display (``main``) and the trackers.

    The engine reads the device's running sums as often as the most eager sink asks (the smallest
    ``progress_every_*``); each sink is told only when its own cadence is due. A tracker that fails
    is warned about once (through ``main``) and dropped: a tracker never kills or loses a run. The
    display's own errors propagate as before.
    """

    def __init__(self, main: Reporter, trackers: list[Reporter], clock=None) -> None:
        import time

        self.main = main
        self.trackers = list(trackers)
        self._clock = clock or time.perf_counter
        self._due = {id(s): _Due(s, self._clock) for s in (main, *self.trackers)}

    # the cadence the engine sees: the most eager sink's
    @property
    def progress_every_steps(self) -> int | None:  # type: ignore[override]
        every = [d.every_steps for d in self._due.values() if d.every_steps]
        return min(every) if every else None

    @property
    def progress_every_s(self) -> float | None:  # type: ignore[override]
        every = [d.every_s for d in self._due.values() if d.every_s]
        return min(every) if every else None

    def _each(self, hook: str, *args: Any) -> None:
        getattr(self.main, hook)(*args)
        for sink in list(self.trackers):
            self._guarded(sink, hook, *args)

    def _guarded(self, sink: Reporter, hook: str, *args: Any) -> None:
        try:
            getattr(sink, hook)(*args)
        except Exception as exc:  # noqa: BLE001 - whatever a tracker library raises, training goes on
            self.trackers.remove(sink)
            self._due.pop(id(sink), None)
            name = getattr(sink, "name", type(sink).__name__)
            self.main.warning(f"the {name} tracker failed ({type(exc).__name__}: {exc}); "
                              "training goes on without it")
            try:
                sink.close(failed=True)
            except Exception:  # noqa: BLE001 - it failed already; nothing more to say
                pass

    def message(self, text: str) -> None:
        self.main.message(text)

    def warning(self, text: str) -> None:
        self.main.warning(text)

    def download_progress(self, name: str, done: int, total: int | None) -> None:
        self.main.download_progress(name, done, total)

    def start(self, info: RunInfo) -> None:
        self._each("start", info)
        for sink in self.trackers:
            for note in getattr(sink, "notes", ()):
                self.main.message(note)

    def epoch_begin(self, epoch: int, steps: int) -> None:
        self._each("epoch_begin", epoch, steps)
        for due in self._due.values():  # each sink's cadence for this epoch, from now
            due.reset()

    def step_progress(self, progress: dict[str, Any]) -> None:
        if self._due[id(self.main)].due(progress):
            self.main.step_progress(progress)
        for sink in list(self.trackers):
            due = self._due.get(id(sink))
            if due is not None and due.due(progress):
                self._guarded(sink, "step_progress", progress)

    def epoch_end(self, record: EpochRecord) -> None:
        self._each("epoch_end", record)

    def finish(self, summary: RunSummary) -> None:
        for sink in list(self.trackers):  # the trackers first: the display's final line is the last
            self._guarded(sink, "finish", summary)
        self.main.finish(summary)

    def close(self, failed: bool = False) -> None:
        for sink in list(self.trackers):
            try:
                sink.close(failed=failed)
            except Exception as exc:  # noqa: BLE001
                self.main.warning(f"the {getattr(sink, 'name', '?')} tracker did not close cleanly: {exc}")
        self.trackers.clear()
        close = getattr(self.main, "close", None)
        if close:
            close()
