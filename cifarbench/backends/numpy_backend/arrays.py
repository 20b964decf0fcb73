"""The array module ``xp`` (NumPy or CuPy) and the small helpers every primitive shares.

Every primitive in this package takes arrays and works out ``xp`` from them, so the same
code runs on NumPy (CPU) and CuPy (NVIDIA GPU), in whatever float dtype it is given
(float32 for training, float64 for the gradient checks in the tests).
"""

from __future__ import annotations

import os

import numpy as np


def array_module(a):
    """numpy or cupy, whichever owns ``a`` (without importing cupy when it is not loaded)."""
    mod = type(a).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """A host copy (never a view of a buffer the backend will overwrite)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.array(a, copy=True)


class Workspace:
    """Scratch buffers reused across layers and steps, one flat allocation per role.

    im2col matrices are the largest temporaries of a CNN step (9x the activation for a 3x3
    conv); keeping one buffer per role, grown to the largest layer, bounds memory and avoids
    the page faults of a fresh allocation every layer. A caller must be done with a view
    before asking for the same role again.
    """

    def __init__(self, chunk_bytes: int | None = None):
        self._flat: dict[tuple[str, object], object] = {}
        # convolutions work through the batch in chunks of images whose im2col matrix is at most
        # this big (None: the whole batch at once, as a GPU wants)
        self.chunk_bytes = chunk_bytes

    def get(self, xp, role: str, shape: tuple[int, ...], dtype):
        n = 1
        for d in shape:
            n *= d
        key = (role, np.dtype(dtype).str, xp.__name__)
        flat = self._flat.get(key)
        if flat is None or flat.size < n:
            flat = xp.empty(n, dtype=dtype)
            self._flat[key] = flat
        return flat[:n].reshape(shape)

    def clear(self) -> None:
        self._flat.clear()


def blas_threads(n: int | None = None) -> int | None:
    """Set (when n is given) and return the thread count of NumPy's BLAS (OpenBLAS, MKL, BLIS,
    Accelerate: whatever threadpoolctl finds loaded); None when it finds none.

    Why: on a busy 2-core machine a 2-thread GEMM waits a scheduler time slice for its
    second thread, which can make small GEMMs many times slower; one thread is then faster.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    if n is not None:
        threadpool_limits(limits=int(n), user_api="blas")
    counts = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def idle_threads() -> int:
    """Threads for the BLAS when none are asked for: the usable CPUs that the 1-minute load
    average leaves idle, at least 1 (on an idle machine, every usable CPU)."""
    cpus = usable_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cpus
    return max(1, min(cpus, int(cpus - load + 0.5)))
