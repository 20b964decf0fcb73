"""2-D convolution by im2col + one GEMM, channels-last.

Layouts inside this backend: activations NHWC, conv weights OHWI ``(O, kh, kw, C)``; the
backend transposes to the canonical OIHW at its boundary.

Forward, for output pixel (n, p, q) and output channel o::

    y[n, p, q, o] = b[o] + sum_{i, j, c} xpad[n, s*p + i, s*q + j, c] * w[o, i, j, c]

im2col gathers, for every output pixel, the k*k*C input values it sees into one row of a
matrix ``cols`` (M = N*Ho*Wo rows, K = k*k*C columns, in (i, j, c) order, the order of
``w.reshape(O, K)``), so the whole layer is one GEMM ``y = cols @ w2.T`` with output rows
already in NHWC order. The gather is k*k strided copies (one per kernel tap), never a loop
over pixels or images.

Backward, with ``dy`` reshaped to (M, O)::

    dw2   = dy.T @ cols            (O, K), computed as its transpose cols.T @ dy (the faster GEMM)
    db    = sum over rows of dy    (O,)
    dx    = the adjoint of the forward, applied to dy

For stride 1 the adjoint is itself a convolution: ``dx = conv(dy, w')`` with pad ``k - 1 - pad``
and ``w'[c, i, j, o] = w[o, k-1-i, k-1-j, c]`` (the kernel flipped, in and out channels swapped):
one im2col of dy and one GEMM. That same gathered matrix gives dw too (``conv2d_backward``), so a
stride-1 conv's backward gathers once, never x again. For stride > 1 dx is col2im: ``dcols =
dy @ w2`` (M, K), each tap's slice of dcols added back where it was gathered from (k*k strided
adds), and dw needs x's cols gathered again.

im2col is one copy out of a strided 6-D view (N, Ho, Wo, k, k, C) of the padded input, so NumPy
copies runs of k*C contiguous values instead of k*k separate C-value slices. Both passes go
through the batch in chunks of images (``Workspace.chunk_bytes``) instead of keeping a
9x-activation matrix per layer; a chunk's GEMM runs in row pieces (``arrays.matmul_rows``) that
suit OpenBLAS's small-matrix kernel.
"""

from __future__ import annotations

from cifarbench.backends.numpy_backend.arrays import Tiled, Workspace, array_module, matmul_rows, matmul_t_acc


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _padded(x, pad: int, ws: Workspace, role: str):
    """x zero-padded on H and W. In chunks (NumPy), a buffer is kept for each chunk shape and pad:
    its border is zeroed when it is made and never written again (only the interior is), so a
    call is one copy, not five. Whole batches (a GPU) share one buffer, its border re-zeroed each
    call, so that every batch size seen does not keep a batch-sized buffer of its own."""
    if pad == 0:
        return x
    xp = array_module(x)
    n, h, w, c = x.shape
    shape = (n, h + 2 * pad, w + 2 * pad, c)
    if ws.chunk_bytes is not None:
        buf = ws.get(xp, (role, n, h, w, c, pad), shape, x.dtype, zeroed=True)
    else:
        buf = ws.get(xp, role, shape, x.dtype)
        buf[:, :pad] = 0
        buf[:, h + pad :] = 0
        buf[:, pad : h + pad, :pad] = 0
        buf[:, pad : h + pad, w + pad :] = 0
    buf[:, pad : h + pad, pad : w + pad] = x
    return buf


def _strided(xp, src, shape, strides):
    """A strided view of src; NumPy's ndarray constructor takes 0.5 us where as_strided takes 3.5
    (a gather per chunk of every conv: held under the GIL that the lane threads share)."""
    if xp.__name__ == "numpy" and src.flags.c_contiguous:
        return xp.ndarray(shape, src.dtype, src, 0, strides)
    return xp.lib.stride_tricks.as_strided(src, shape, strides)


def cols_shape(x_shape, k: int, stride: int, pad: int) -> tuple[int, int]:
    n, h, w, c = x_shape
    return n * out_size(h, k, stride, pad) * out_size(w, k, stride, pad), k * k * c


def im2col(x, k: int, stride: int, pad: int, ws: Workspace, out=None, role: str = "cols"):
    """(N, H, W, C) -> cols (N*Ho*Wo, k*k*C), in ``out`` (flat, large enough) or a workspace
    buffer; for a 1x1 stride-1 conv, x itself."""
    n, h, w, c = x.shape
    ho, wo = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    xp = array_module(x)
    if k == 1 and pad == 0 and stride == 1:
        return x.reshape(n * ho * wo, c)
    shape6 = (n, ho, wo, k, k, c)
    cols = ws.get(xp, role, shape6, x.dtype) if out is None else out[: n * ho * wo * k * k * c].reshape(shape6)
    src = _padded(x, pad, ws, "xpad")
    s0, s1, s2, s3 = src.strides
    # window (p, q), tap (i, j) reads src[:, s*p + i, s*q + j]: a view, copied once
    view = _strided(xp, src, shape6, (s0, stride * s1, stride * s2, s1, s2, s3))
    cols[...] = view
    return cols.reshape(n * ho * wo, k * k * c)


def col2im(dcols, x_shape: tuple[int, ...], k: int, stride: int, pad: int, ws: Workspace):
    """Adjoint of im2col: scatter-add (M, k*k*C) back to a fresh (N, H, W, C) array."""
    xp = array_module(dcols)
    n, h, w, c = x_shape
    ho, wo = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    if k == 1 and pad == 0 and stride == 1:
        return dcols.reshape(n, h, w, c)
    d6 = dcols.reshape(n, ho, wo, k, k, c)
    dxpad = ws.get(xp, "dxpad", (n, h + 2 * pad, w + 2 * pad, c), dcols.dtype) if pad else xp.zeros(x_shape, dcols.dtype)
    if pad:
        dxpad[...] = 0
    for i in range(k):
        for j in range(k):
            dxpad[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :] += d6[:, :, :, i, j, :]
    if not pad:
        return dxpad
    return xp.ascontiguousarray(dxpad[:, pad : pad + h, pad : pad + w])


def _chunks(n: int, per_image: int, ws: Workspace):
    """Image ranges [s, e) whose im2col matrix stays within ``ws.chunk_bytes`` (whole batch if
    None, or when there is no matrix to gather: per_image 0)."""
    step = n if ws.chunk_bytes is None or not per_image else max(1, min(n, ws.chunk_bytes // per_image))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def conv2d_forward(x, w, b, stride: int, pad: int, ws: Workspace):
    """y (N, Ho, Wo, O) = conv(x (N, H, W, C), w (O, k, k, C)) + b.

    The batch is cut into chunks of images (see ``Workspace.chunk_bytes``): each chunk's cols is
    gathered and multiplied while it is still in cache, instead of streaming one huge matrix
    through memory twice. The chunks are cut within the batch's lanes (``Workspace.lanes``), which
    ``ws.threads`` threads share out, each writing its own rows of y.
    """
    xp = array_module(x)
    n, h, wd, c = x.shape
    o, k = w.shape[0], w.shape[1]
    ho, wo = out_size(h, k, stride, pad), out_size(wd, k, stride, pad)
    w2t = xp.ascontiguousarray(w.reshape(o, -1).T)  # contiguous: see arrays.GEMM_CELLS
    y = xp.empty((n * ho * wo, o), dtype=x.dtype)
    gathers = not (k == 1 and pad == 0 and stride == 1)
    tl = Tiled(y, *(() if b is None else (b,)))

    def part(s0: int, e0: int, pws: Workspace) -> None:
        for s, e in _chunks(e0 - s0, gathers * ho * wo * k * k * c * x.itemsize, pws):
            r0, r1 = (s + s0) * ho * wo, (e + s0) * ho * wo
            matmul_rows(im2col(x[s + s0 : e + s0], k, stride, pad, pws), w2t, y[r0:r1], pws)
            if b is not None:  # while the chunk's rows are in cache
                g = tl.group(r0, r1)
                tl.view(y, r0, r1, g)[...] += tl.vecs[g][0]

    ws.lanes(n, part)
    return y.reshape(n, ho, wo, o)


def conv2d_backward(dy, x, w, stride: int, pad: int, ws: Workspace, need_dx: bool = True, has_bias: bool = True):
    """Gradients (dx or None, dw, db or None) of conv2d_forward for upstream gradient dy,
    chunk by chunk of images like the forward (a chunk's matrix is gathered again, never kept); dw is summed
    lane by lane (``Workspace.lanes``), then over the lanes in order, so it does not depend on
    how many threads ran the lanes.

    When dx is the transposed convolution (stride 1), dw comes from the same gathered matrix:
    with ``dcols = im2col(dy, pad k - 1 - pad)`` (a row per input pixel q, a column per flipped
    tap t' = (k-1-i, k-1-j) and output channel o), ``dcols[q, (t', o)] = dy[q + pad - t, o]``, so

        dw[o, i, j, c] = sum_q x[q, c] * dcols[q, (t', o)]      i.e.  dw' = dcols.T @ x

    and x is never gathered again (one gather per conv's backward instead of two)."""
    xp = array_module(dy)
    n, ho, wo, o = dy.shape
    k = w.shape[1]
    c = x.shape[-1]
    m = ho * wo  # output pixels per image
    dy2 = dy.reshape(n * m, o)
    tl = Tiled(dy2)
    pointwise = k == 1 and pad == 0 and stride == 1
    transposed = not pointwise and stride == 1 and pad <= k - 1  # dx = conv(dy, flipped w): gathers only
    shared = transposed and need_dx  # dw from dx's gathered matrix (above)
    w2 = w.reshape(o, -1)
    if transposed:
        wtt = xp.ascontiguousarray(w[:, ::-1, ::-1, :].transpose(1, 2, 0, 3)).reshape(k * k * o, c)
    dx = xp.empty(x.shape, dtype=dy.dtype) if need_dx else None
    hw = x.shape[1] * x.shape[2]
    x2 = x.reshape(n * hw, c)
    dx2 = None if dx is None else dx.reshape(n * hw, c)
    per_image = (not pointwise) * max(m * k * k * c, hw * k * k * o) * dy.itemsize

    def part(s0: int, e0: int, pws: Workspace):
        # dw.T (cols.T @ dy is the faster GEMM), or the flipped (k*k*o, c) matrix of dcols.T @ x
        acc = xp.zeros((k * k * o, c) if shared else (k * k * c, o), dtype=dy.dtype)
        db = xp.zeros(o, dtype=dy.dtype) if has_bias else None
        for s, e in _chunks(e0 - s0, per_image, pws):
            s, e = s + s0, e + s0
            dyc = dy2[s * m : e * m]
            if has_bias:
                db += tl.colsum(dy2, s * m, e * m)
            if shared:
                dcols = im2col(dy[s:e], k, 1, k - 1 - pad, pws)
                matmul_rows(dcols, wtt, dx2[s * hw : e * hw], pws)
                matmul_t_acc(dcols, x2[s * hw : e * hw], acc, pws)
                continue
            matmul_t_acc(im2col(x[s:e], k, stride, pad, pws), dyc, acc, pws)
            if dx is None:
                continue
            if pointwise:
                matmul_rows(dyc, w2, dx2[s * hw : e * hw], pws)
            else:
                dcols = pws.get(xp, "dcols", (dyc.shape[0], k * k * c), dy.dtype)
                matmul_rows(dyc, w2, dcols, pws)
                dx[s:e] = col2im(dcols, (e - s,) + x.shape[1:], k, stride, pad, pws)
        return acc, db

    parts = ws.lanes(n, part)
    acc, db = parts[0]
    for other, other_db in parts[1:]:
        acc += other
        if has_bias:
            db += other_db
    if shared:  # acc[(k-1-i, k-1-j, o), c] -> dw[o, i, j, c]
        dw = acc.reshape(k, k, o, c)[::-1, ::-1].transpose(2, 0, 1, 3)
    else:
        dw = acc.T.reshape(w.shape)
    return dx, xp.ascontiguousarray(dw), db
