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


# A batch (its convolutions, BatchNorm, ReLU, residual adds and pooling) is cut into this many lanes
# whatever the thread count (see Workspace.lanes): up to 4 threads share them out, and results
# never depend on how many.
LANES = 4

# Elementwise passes (BatchNorm, ReLU, residual adds) work through their rows in pieces of about
# this many bytes per array, so the several passes each piece takes (statistics, normalise,
# affine, ReLU) read it from cache rather than memory. Fixed, like LANES: results never depend on
# the thread count. Measured on a 2-core Xeon (2 MiB L2 a core), resnet20 b128: 256 KiB, 512 KiB and
# 1 MiB within 2% of each other at 1 thread; at 2 threads 512 KiB was fastest (smaller pieces lose
# to the GIL's hand-overs between threads, larger ones to the cache).
ROW_BYTES = int(os.environ.get("CIFARBENCH_NUMPY_ROW_BYTES", str(512 << 10)))


# NumPy's inner loop runs along the last axis: with C = 16 channels, an (M, C) array broadcast
# against a (C,) vector is M loops of 16 elements. Viewed as (M / G, G * C) against the vector
# tiled G times, it is long loops instead (a column sum about 6x faster at C = 16). Broadcasts were
# faster again at 8192 than at 512 wide on a 2-core Xeon (x * v over 512 KiB: 12.1 against 22.9 us;
# elementwise x * z 16.5 us at both).
INNER = int(os.environ.get("CIFARBENCH_NUMPY_INNER", "8192"))


# OpenBLAS (its SkylakeX and later x86-64 kernels) multiplies a GEMM of at most 1e6 multiply-adds
# (rows * N * K) with a kernel that skips packing the operands when both are C-contiguous: for the
# skinny shapes of small convolutions that is 1.2-1.4x faster (measured on a 2-core Xeon, 1 thread:
# (rows, 144) @ (144, 16) 86 -> 108 GFLOP/s, (rows, 288) @ (288, 32) 114 -> 133, dW as
# cols.T @ dy 75 -> 87 and 97 -> 110). Pieces of fewer than GEMM_MIN_ROWS rows lose more to the
# call overhead than they gain ((rows, 576) @ (576, 64): 124 -> 96 at 27 rows), so such GEMMs stay
# whole. The pieces depend on the shapes only, never on the thread count.
GEMM_CELLS = 1_000_000
GEMM_MIN_ROWS = 96


def gemm_pieces(m: int, k: int, n: int, ws) -> tuple[int, int]:
    """(r, p) for an (m, k) @ (k, n) GEMM: p whole pieces of r rows, then the remainder; p < 2 means
    one GEMM (a GPU, pieces too small, or too few rows for two)."""
    r = 0 if ws.chunk_bytes is None else GEMM_CELLS // max(1, k * n)
    return (r, m // r) if r >= GEMM_MIN_ROWS else (m, 1)


def matmul_rows(a, b, out, ws) -> None:
    """out = a @ b (a: rows x K, b: K x N C-contiguous, out: rows x N), in row pieces of ``gemm_pieces``.

    The pieces go to NumPy as one stacked matmul (its loop over them runs in C, without the GIL:
    a Python loop of GEMMs hands the GIL back and forth with the other lane threads at every call,
    which at 2 threads cost more than the small kernel gains), then the remainder rows."""
    xp = array_module(a)
    m = a.shape[0]
    r, p = gemm_pieces(m, b.shape[0], b.shape[1], ws)
    if p < 2:
        xp.matmul(a, b, out=out)
        return
    xp.matmul(a[: p * r].reshape(p, r, -1), b, out=out[: p * r].reshape(p, r, -1))
    if p * r < m:
        xp.matmul(a[p * r :], b, out=out[p * r :])


def matmul_t_acc(a, b, acc, ws) -> None:
    """acc += a.T @ b (a: rows x K, b: rows x N, acc: K x N), in row pieces of ``gemm_pieces`` (one
    stacked matmul, as in ``matmul_rows``), their products summed in row order."""
    xp = array_module(a)
    (m, k), n = a.shape, b.shape[1]
    r, p = gemm_pieces(m, k, n, ws)
    if p < 2:
        acc += a.T @ b
        return
    prods = ws.get(xp, "gemm_parts", (p + (p * r < m), k, n), acc.dtype)
    xp.matmul(a[: p * r].reshape(p, r, k).transpose(0, 2, 1), b[: p * r].reshape(p, r, n), out=prods[:p])
    if p * r < m:
        xp.matmul(a[p * r :].T, b[p * r :], out=prods[p])
    acc += prods.sum(axis=0)  # (over the outer axis NumPy adds the planes in order: no thread dependence)


class Tiled:
    """Row pieces of (M, C) arrays viewed as (rows / G, G * C), with per-channel vectors tiled G
    times to match (G = 1 for a piece whose row count G does not divide: only ever a remainder)."""

    def __init__(self, a2, *vectors):
        self.c = a2.shape[1]
        self.g = max(1, INNER // self.c)
        xp = array_module(a2)
        self.vecs = {1: vectors, self.g: tuple(xp.tile(v, self.g) for v in vectors)}

    def group(self, r0: int, r1: int) -> int:
        return self.g if (r1 - r0) % self.g == 0 else 1

    def view(self, a, r0: int, r1: int, g: int):
        return a[r0:r1].reshape(-1, g * self.c)

    def fold(self, s, g: int):
        """A column sum over a tiled view, folded back to C channels."""
        return s if g == 1 else s.reshape(g, self.c).sum(axis=0)

    def tile(self, ws, role, v, g: int):
        """Vector v (C,) tiled g times into ws's buffer for ``role`` (v itself for g = 1)."""
        if g == 1:
            return v
        buf = ws.get(array_module(v), role, (g, self.c), v.dtype)
        buf[...] = v
        return buf.reshape(-1)

    def colsum(self, a, r0: int, r1: int):
        """sum(a[r0:r1], axis=0) over C channels, through the tiled view."""
        g = self.group(r0, r1)
        return self.fold(self.view(a, r0, r1, g).sum(axis=0), g)


class Workspace:
    """Scratch buffers reused across layers and steps, one flat allocation per role.

    im2col matrices are the largest temporaries of a CNN step (9x the activation for a 3x3
    conv); keeping one buffer per role, grown to the largest layer, bounds memory and avoids
    the page faults of a fresh allocation every layer. A caller must be done with a view
    before asking for the same role again.
    """

    def __init__(self, chunk_bytes: int | None = None, threads: int = 1):
        self._flat: dict[tuple[str, object], object] = {}
        # convolutions work through the batch in chunks of images whose im2col matrix is at most
        # this big (None: the whole batch at once, as a GPU wants)
        self.chunk_bytes = chunk_bytes
        self._pool = None
        self._subs: list[Workspace] = []
        self.threads = 1
        self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        """Run the lanes (``lanes``, ``rows``) on ``threads`` Python threads, each on its own part of
        the batch with its own scratch (NumPy's copies, ufuncs and GEMMs release the GIL; the BLAS
        should then run 1 thread each). 1: every lane on the calling thread."""
        threads = max(1, min(LANES, int(threads)))
        if threads == self.threads:  # (a pool exists exactly when threads > 1)
            return
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.threads = threads
        self._subs = [Workspace(self.chunk_bytes) for _ in range(threads - 1)]
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="cifarbench-conv")

    def lanes(self, n: int, fn):
        """``fn(start, end, workspace)`` over ``LANES`` contiguous parts ("lanes") of range(n), in
        order, the lanes shared out over ``threads`` threads (the first group on the calling thread).

        The lanes do not depend on the thread count, and each is computed in the same order
        whatever thread runs it, so a result (a weight gradient summed lane by lane) is
        bit-identical for any ``threads``: a run resumed on a busier machine continues exactly.
        """
        lanes = 1 if self.chunk_bytes is None else max(1, min(LANES, n))  # None: a GPU's whole batch
        bounds = [n * i // lanes for i in range(lanes + 1)]
        workers = min(self.threads, lanes)

        def run(group: int, pws: Workspace):
            first, last = lanes * group // workers, lanes * (group + 1) // workers
            return [fn(bounds[i], bounds[i + 1], pws) for i in range(first, last)]

        futures = [self._pool.submit(run, g, self._subs[g - 1]) for g in range(1, workers)]
        out = run(0, self)
        for f in futures:
            out += f.result()
        return out

    def rows(self, m: int, row_bytes: int, fn, align: int = 1) -> list:
        """``fn(r0, r1, workspace)`` over pieces of range(m) rows (each about ``ROW_BYTES`` for rows of
        ``row_bytes``, a multiple of ``align`` rows but for the remainder of m), cut within the lanes
        of ``lanes``; returns the results in row order.

        The pieces depend on m, the row size and align only, so partial sums combined in the
        order returned are bit-identical for any thread count. Without chunks (a GPU): one piece.
        """
        per = m if self.chunk_bytes is None else max(1, ROW_BYTES // max(1, row_bytes) // align) * align
        units = max(1, m // align)

        def lane(s: int, e: int, pws: Workspace) -> list:
            s, e = s * align, (m if e == units else e * align)
            return [fn(r, min(e, r + per), pws) for r in range(s, e, per)]

        out: list = []
        for part in self.lanes(units, lane):
            out += part
        return out

    def get(self, xp, role, shape: tuple[int, ...], dtype, zeroed: bool = False):
        """A (shape, dtype) view of the buffer kept for ``role`` (any hashable), grown as needed.
        zeroed: the buffer is all zeros when (re)made; what the caller writes into it stays."""
        n = 1
        for d in shape:
            n *= d
        key = (role, np.dtype(dtype).str, xp.__name__)
        flat = self._flat.get(key)
        if flat is None or flat.size < n:
            flat = (xp.zeros if zeroed else xp.empty)(n, dtype=dtype)
            self._flat[key] = flat
        return flat[:n].reshape(shape)

    def clear(self) -> None:
        self._flat.clear()
        for sub in self._subs:
            sub.clear()


WHOLE = Workspace(None)  # one piece, one lane: what a caller without a workspace (a test, a GPU) gets


def flat_rows(a):
    """a viewed as rows of its last axis (every array here is C-contiguous)."""
    return a.reshape(-1, a.shape[-1])


def add_into(out, b, ws: Workspace | None = None) -> None:
    """out += b (same shape), piece by piece over the lanes."""
    ws = ws or WHOLE
    o2, b2 = flat_rows(out), flat_rows(b)

    def piece(r0, r1, pws):
        o2[r0:r1] += b2[r0:r1]

    ws.rows(o2.shape[0], o2.shape[1] * o2.itemsize, piece)


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
