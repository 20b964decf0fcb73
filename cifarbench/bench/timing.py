"""The one timing rule (DESIGN.md, honest timing): synchronise the device, read the clock, run,
synchronise again, read the clock. Work a backend has only queued is thus inside the interval."""

from __future__ import annotations

import time
from typing import Any, Callable

Clock = Callable[[], float]


def timed(backend: Any, fn: Callable[[], Any], clock: Clock = time.perf_counter) -> tuple[Any, float]:
    """(fn(), seconds) with the device synchronised before both clock reads."""
    backend.synchronize()
    t0 = clock()
    out = fn()
    backend.synchronize()
    return out, clock() - t0
