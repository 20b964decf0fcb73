"""The array module ``xp`` (NumPy or CuPy) and the small helpers every primitive shares.

Every primitive in this package takes arrays and works out ``xp`` from them, so the same
code runs on NumPy (CPU) and CuPy (NVIDIA GPU), in whatever float dtype it is given
(float32 for training, float64 for the gradient checks in the tests).
"""

from __future__ import annotations

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


_BLAS_PREFIXES = ("scipy_openblas", "openblas")
_BLAS_SUFFIXES = ("64_", "")


def _openblas():
    """NumPy's bundled OpenBLAS as a ctypes library, or None (other BLAS, not Linux, ...)."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre in _BLAS_PREFIXES:
            for suf in _BLAS_SUFFIXES:
                if hasattr(lib, f"{pre}_set_num_threads{suf}"):
                    return lib, f"{pre}_set_num_threads{suf}", f"{pre}_get_num_threads{suf}"
    return None


def blas_threads(n: int | None = None) -> int | None:
    """Set (when n is given) and return OpenBLAS's thread count; None when it cannot be reached.

    Why: on a busy 2-core machine a 2-thread GEMM waits a scheduler time slice for its
    second thread, which can make small GEMMs 100x slower; one thread is then faster.
    """
    found = _openblas()
    if found is None:
        return None
    lib, setter, getter = found
    if n is not None:
        getattr(lib, setter)(int(n))
    return int(getattr(lib, getter)())
