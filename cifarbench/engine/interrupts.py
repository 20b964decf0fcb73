"""SIGINT (Ctrl-C) and SIGTERM (schedulers, ``docker stop``) during a run.

Both stop the run with a resumable checkpoint; the exit code is 128 + the signal (130, 143).
While a training step or a checkpoint write is in flight the stop is deferred to the next step
boundary, so the saved position is exact and no step is half applied; anywhere else (data
loading, evaluation) it takes effect at once. A second signal always stops at once: a save it
cuts short is never committed, and the previous checkpoint stays whole.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A stop requested by a signal; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequests:
    """Installs the handlers for the block it guards (main thread only) and restores the old ones."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferring = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first and self._deferring:
            return
        raise RunInterrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        before, self._deferring = self._deferring, True
        try:
            yield
        finally:
            self._deferring = before

    def check(self) -> None:
        """Raise at a safe point when a stop was requested."""
        if self.signum is not None:
            raise RunInterrupted(self.signum)
