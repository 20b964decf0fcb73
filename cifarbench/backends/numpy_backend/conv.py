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

    dw2   = dy.T @ cols            (O, K)
    db    = sum over rows of dy    (O,)
    dcols = dy @ w2                (M, K)
    dx    = col2im(dcols): each tap's slice of dcols added back where it was gathered from

``cols`` is not kept between forward and backward (it would cost 9x an activation per
3x3 layer); backward gathers it again into the same workspace buffer.
"""

from __future__ import annotations

from cifarbench.backends.numpy_backend.arrays import Workspace, array_module


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _padded(x, pad: int, ws: Workspace, role: str):
    """x zero-padded on H and W, in a reused buffer (only the border is re-zeroed)."""
    if pad == 0:
        return x
    xp = array_module(x)
    n, h, w, c = x.shape
    buf = ws.get(xp, role, (n, h + 2 * pad, w + 2 * pad, c), x.dtype)
    buf[:, :pad] = 0
    buf[:, h + pad :] = 0
    buf[:, pad : h + pad, :pad] = 0
    buf[:, pad : h + pad, w + pad :] = 0
    buf[:, pad : h + pad, pad : w + pad] = x
    return buf


def cols_shape(x_shape, k: int, stride: int, pad: int) -> tuple[int, int]:
    n, h, w, c = x_shape
    return n * out_size(h, k, stride, pad) * out_size(w, k, stride, pad), k * k * c


def im2col(x, k: int, stride: int, pad: int, ws: Workspace, out=None):
    """(N, H, W, C) -> cols (N*Ho*Wo, k*k*C), in ``out`` (flat, large enough) or a workspace
    buffer; for a 1x1 stride-1 conv, x itself."""
    n, h, w, c = x.shape
    ho, wo = out_size(h, k, stride, pad), out_size(w, k, stride, pad)
    xp = array_module(x)
    if k == 1 and pad == 0 and stride == 1:
        return x.reshape(n * ho * wo, c)
    shape6 = (n, ho, wo, k, k, c)
    cols = ws.get(xp, "cols", shape6, x.dtype) if out is None else out[: n * ho * wo * k * k * c].reshape(shape6)
    if k == 1 and pad == 0:
        cols[:, :, :, 0, 0, :] = x[:, ::stride, ::stride]
        return cols.reshape(n * ho * wo, c)
    xpad = _padded(x, pad, ws, "xpad")
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i, j, :] = xpad[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
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


def conv2d_forward(x, w, b, stride: int, pad: int, ws: Workspace, cols_out=None):
    """y (N, Ho, Wo, O) = conv(x (N, H, W, C), w (O, k, k, C)) + b.

    cols_out: a flat buffer to leave the im2col matrix in, for backward to reuse.
    """
    xp = array_module(x)
    n, h, wd, _ = x.shape
    o, k = w.shape[0], w.shape[1]
    ho, wo = out_size(h, k, stride, pad), out_size(wd, k, stride, pad)
    cols = im2col(x, k, stride, pad, ws, out=cols_out)
    y = xp.empty((n * ho * wo, o), dtype=x.dtype)
    xp.matmul(cols, w.reshape(o, -1).T, out=y)
    if b is not None:
        y += b
    return y.reshape(n, ho, wo, o)


def conv2d_backward(
    dy, x, w, stride: int, pad: int, ws: Workspace, need_dx: bool = True, has_bias: bool = True, cols=None
):
    """Gradients (dx or None, dw, db or None) of conv2d_forward for upstream gradient dy.

    cols: the forward's im2col matrix when it was kept, else it is gathered again.
    """
    xp = array_module(dy)
    n, ho, wo, o = dy.shape
    k = w.shape[1]
    dy2 = dy.reshape(n * ho * wo, o)
    db = dy2.sum(axis=0) if has_bias else None
    if cols is None:
        cols = im2col(x, k, stride, pad, ws)
    dw = xp.matmul(dy2.T, cols).reshape(w.shape)
    if not need_dx:
        return None, dw, db
    if k == 1 and pad == 0 and stride == 1:
        return xp.matmul(dy2, w.reshape(o, -1)).reshape(x.shape), dw, db
    dcols = ws.get(xp, "dcols", cols.shape, dy.dtype)
    xp.matmul(dy2, w.reshape(o, -1), out=dcols)
    return col2im(dcols, x.shape, k, stride, pad, ws), dw, db
