"""Activations, pooling, linear, dropout and flatten, channels-last (NHWC), forward + backward.

Each forward returns its output and the cache its backward needs; each backward maps the
upstream gradient ``dy`` to ``dx`` (and parameter gradients where there are parameters).
"""

from __future__ import annotations

import numpy as np

from cifarbench.backends.numpy_backend.arrays import WHOLE, Tiled, Workspace, array_module, flat_rows

# ----- ReLU / leaky ReLU: y = x if x > 0 else slope * x;  dx = dy * (1 if x > 0 else slope) --


def relu_forward(x, slope: float = 0.0, inplace: bool = False, ws: Workspace | None = None, need_mask: bool = True,
                 skip=None):
    """Returns (y, mask) with mask = x > 0 (a boolean, a quarter of the memory of y; None unless
    ``need_mask`` or a slope needs it), piece by piece over the lanes (``Workspace.rows``).

    skip: y = relu(x + skip), the residual add before the ReLU in the same pass over each piece
    (with inplace, x + skip is written over x)."""
    ws = ws or WHOLE
    xp = array_module(x)
    x2 = flat_rows(x)
    s2 = None if skip is None else flat_rows(skip)
    y2 = x2 if inplace else xp.empty_like(x2)
    need_mask = need_mask or slope != 0.0
    mask = xp.empty(x2.shape, bool) if need_mask else None
    tl = Tiled(x2, xp.zeros(x2.shape[1], x2.dtype))

    def piece(r0, r1, pws):
        g = tl.group(r0, r1)
        (zero,) = tl.vecs[g]
        xc, yc = tl.view(x2, r0, r1, g), tl.view(y2, r0, r1, g)
        if s2 is not None:
            xp.add(xc, tl.view(s2, r0, r1, g), out=yc)
            xc = yc
        if need_mask:
            xp.greater(xc, zero, out=tl.view(mask, r0, r1, g))
        if slope == 0.0:
            xp.maximum(xc, zero, out=yc)  # (against a vector: NumPy's loop for a scalar 0 is 2x slower)
        else:
            yc[...] = xp.where(tl.view(mask, r0, r1, g), xc, xc * slope)

    ws.rows(x2.shape[0], x2.shape[1] * x2.itemsize, piece, tl.g)
    return y2.reshape(x.shape), None if mask is None else mask.reshape(x.shape)


def relu_backward(dy, mask, slope: float = 0.0, ws: Workspace | None = None):
    ws = ws or WHOLE
    xp = array_module(dy)
    d2, m2 = flat_rows(dy), flat_rows(mask)
    dx = xp.empty_like(d2)

    def piece(r0, r1, pws):
        if slope == 0.0:
            xp.multiply(d2[r0:r1], m2[r0:r1], out=dx[r0:r1])
        else:
            dx[r0:r1] = xp.where(m2[r0:r1], d2[r0:r1], d2[r0:r1] * slope)

    ws.rows(d2.shape[0], d2.shape[1] * d2.itemsize, piece)
    return dx.reshape(dy.shape)


# ----- pooling over k x k windows with stride s: one strided view per window tap -----------


def _pool_out(size: int, k: int, s: int) -> int:
    return (size - k) // s + 1


def _tap(x, i: int, j: int, ho: int, wo: int, s: int):
    """The view of x that window tap (i, j) reads for every output pixel."""
    return x[:, i : i + s * ho : s, j : j + s * wo : s, :]


def maxpool_forward(x, k: int, s: int, pad: int = 0, ws: Workspace | None = None):
    """y = max over each window; cache = index of the first maximal tap (PyTorch's tie rule).

    ``pad``: -inf on each side of H and W (torch's MaxPool2d padding), so a padded tap never wins.
    The images go through the lanes (``Workspace.lanes``); the first-maximal tap is found with
    boolean passes (a tap wins where it equals the max and no earlier tap did), no masked writes.
    """
    ws = ws or WHOLE
    xp = array_module(x)
    if pad:
        x = xp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-xp.inf)
    n, h, w, c = x.shape
    ho, wo = _pool_out(h, k, s), _pool_out(w, k, s)
    y = xp.empty((n, ho, wo, c), dtype=x.dtype)
    arg = xp.zeros(y.shape, dtype=xp.uint8)

    def lane(i0, i1, pws):
        xs, ys, args = x[i0:i1], y[i0:i1], arg[i0:i1]
        ys[...] = _tap(xs, 0, 0, ho, wo, s)
        for t in range(1, k * k):
            xp.maximum(ys, _tap(xs, t // k, t % k, ho, wo, s), out=ys)
        free = pws.get(xp, "pool_free", ys.shape, bool)  # no earlier tap was the max
        won = pws.get(xp, "pool_won", ys.shape, bool)
        step = pws.get(xp, "pool_step", ys.shape, xp.uint8)
        free[...] = True
        for t in range(k * k):
            xp.equal(_tap(xs, t // k, t % k, ho, wo, s), ys, out=won)
            won &= free
            free ^= won
            if t:
                xp.multiply(won.view(xp.uint8), t, out=step)
                args += step

    ws.lanes(n, lane)
    return y, (arg, x.shape)


def maxpool_backward(dy, cache, k: int, s: int, pad: int = 0, ws: Workspace | None = None):
    """The gradient goes to the one tap that won each window (the padding's share is cut off)."""
    ws = ws or WHOLE
    xp = array_module(dy)
    arg, x_shape = cache
    ho, wo = dy.shape[1], dy.shape[2]
    tiles = k == s and ho * s == x_shape[1] and wo * s == x_shape[2]  # every input pixel in exactly one window
    dx = (xp.empty if tiles else xp.zeros)(x_shape, dtype=dy.dtype)

    def lane(i0, i1, pws):
        dys, args, dxs = dy[i0:i1], arg[i0:i1], dx[i0:i1]
        won = pws.get(xp, "pool_won", args.shape, bool)
        for t in range(k * k):
            tap = _tap(dxs, t // k, t % k, ho, wo, s)
            xp.equal(args, t, out=won)
            if k <= s:  # windows do not overlap: each input pixel is written once
                xp.multiply(dys, won, out=tap)
            else:
                tap += dys * won

    ws.lanes(dy.shape[0], lane)
    return xp.ascontiguousarray(dx[:, pad : dx.shape[1] - pad, pad : dx.shape[2] - pad, :]) if pad else dx


def avgpool_forward(x, k: int, s: int):
    """y = mean over each k x k window (no padding)."""
    xp = array_module(x)
    n, h, w, c = x.shape
    ho, wo = _pool_out(h, k, s), _pool_out(w, k, s)
    y = xp.zeros((n, ho, wo, c), dtype=x.dtype)
    for t in range(k * k):
        y += _tap(x, t // k, t % k, ho, wo, s)
    y *= 1.0 / (k * k)
    return y


def avgpool_backward(dy, x_shape, k: int, s: int):
    """Each input pixel gets dy / k^2 from every window it belongs to."""
    xp = array_module(dy)
    ho, wo = dy.shape[1], dy.shape[2]
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    g = dy * (1.0 / (k * k))
    for t in range(k * k):
        _tap(dx, t // k, t % k, ho, wo, s)[...] += g
    return dx


def global_avgpool_forward(x):
    """(N, H, W, C) -> (N, C): mean over H and W."""
    n, h, w, c = x.shape
    return x.reshape(n, h * w, c).mean(axis=1)


def global_avgpool_backward(dy, x_shape):
    xp = array_module(dy)
    n, h, w, c = x_shape
    g = dy * (1.0 / (h * w))
    return xp.broadcast_to(g[:, None, None, :], x_shape).copy()


# ----- linear: y = x @ W.T + b;  dx = dy @ W, dW = dy.T @ x, db = sum_rows dy ----------------


def linear_forward(x, w, b):
    y = x @ w.T
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, w, need_dx: bool = True, has_bias: bool = True):
    dw = dy.T @ x
    db = dy.sum(axis=0) if has_bias else None
    dx = dy @ w if need_dx else None
    return dx, dw, db


# ----- dropout (inverted): keep with probability 1 - p and scale by 1 / (1 - p) -------------


def dropout_forward(x, p: float, rng):
    """rng: a numpy/cupy Generator. Returns (y, scaled mask); the mask is dy's multiplier too."""
    keep = rng.random(x.shape, dtype=x.dtype) >= p
    mask = keep.astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy * mask


# ----- flatten in C, H, W order (the canonical order, so linear weights are portable) ------


def flatten_forward(x):
    """(N, H, W, C) channels-last -> (N, C*H*W) in C, H, W order."""
    xp = array_module(x)
    n = x.shape[0]
    return xp.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, -1)


def flatten_backward(dy, x_shape):
    xp = array_module(dy)
    n, h, w, c = x_shape
    return xp.ascontiguousarray(dy.reshape(n, c, h, w).transpose(0, 2, 3, 1))


# ----- GELU (exact, erf form): y = x * Phi(x);  dx = dy * (Phi(x) + x * phi(x)) -------------

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
# Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7): the fallback when SciPy
# (an optional extra here) is missing; float32 training cannot see the difference.
_ERFC_COEF = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
              0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def erf(x):
    xp = array_module(x)
    try:
        if xp is np:
            from scipy.special import erf as _erf
        else:
            from cupyx.scipy.special import erf as _erf
        return _erf(x)
    except ImportError:
        pass
    z = xp.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = xp.zeros_like(t) + _ERFC_COEF[-1]
    for c in reversed(_ERFC_COEF[:-1]):
        poly = poly * t + c
    erfc = t * xp.exp(-z * z + poly)
    return xp.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def gelu_forward(x):
    """Returns (y, cache) with cache = (x, Phi(x))."""
    cdf = erf(x * _SQRT_HALF)
    cdf += 1.0
    cdf *= 0.5
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    xp = array_module(dy)
    x, cdf = cache
    pdf = xp.exp(-0.5 * x * x)
    pdf *= _INV_SQRT_2PI
    pdf *= x
    pdf += cdf
    pdf *= dy
    return pdf


# ----- scale: y = factor * x;  dx = factor * dy ----------------------------------------------


def scale_forward(x, factor: float):
    return x * x.dtype.type(factor)


def scale_backward(dy, factor: float):
    return dy * dy.dtype.type(factor)
