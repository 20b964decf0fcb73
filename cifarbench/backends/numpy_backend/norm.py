"""Batch normalisation over the channel axis (last axis: x is viewed as (M, C), M = N*H*W),
optionally fused with the ReLU that follows it.

Training, per channel c over the M values of the batch::

    mu = mean(x)            var = mean((x - mu)^2)      (biased: used to normalise)
    xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta                 (then max(y, 0) when a ReLU is fused)
    running_mean = (1 - m) * running_mean + m * mu
    running_var  = (1 - m) * running_var  + m * var * M / (M - 1)   (unbiased, as PyTorch)

Eval: the same affine map with the running statistics, so one image's output does not depend
on the other images of its batch (test accuracy is independent of the test batch size).

Backward (dy -> dx), with sums over the M rows and dz = dy (times [y > 0] when a ReLU is fused)::

    dbeta  = sum(dz)
    dgamma = sum(dz * xhat)
    dx = gamma / sqrt(var + eps) * (dz - dbeta / M - xhat * dgamma / M)

Every pass goes through the rows in pieces (``Workspace.rows``: cache-sized, cut within the
fixed lanes that the lane threads share), so the several operations of a pass read a piece from
cache instead of streaming the activation through memory once per operation. Statistics are
per-piece (count, mean, centred sum of squares), combined in row order with Chan's pairwise
update; they do not depend on the thread count. A fused ReLU keeps its mask ``y > 0`` (a
boolean, a quarter of y's memory) for backward.
"""

from __future__ import annotations

from cifarbench.backends.numpy_backend.arrays import WHOLE, Tiled, Workspace, array_module, flat_rows


def _moments(x2, ws: Workspace, d2):
    """Per-channel mean and biased variance of x2 (M, C), piece by piece (two passes over each
    piece while it is in cache), combined in row order. d2 receives x2 centred on each piece's
    own mean (it may be x2 itself); returns (mean, var, {first row of a piece: its mean - mean})."""
    xp = array_module(x2)
    tl = Tiled(x2)

    def piece(r0, r1, pws):
        g = tl.group(r0, r1)
        xc, dc = tl.view(x2, r0, r1, g), tl.view(d2, r0, r1, g)
        mean = tl.fold(xc.sum(axis=0), g) / (r1 - r0)
        xp.subtract(xc, tl.tile(pws, "bn_mu", mean, g), out=dc)
        return r0, r1 - r0, mean, tl.fold(xp.einsum("ij,ij->j", dc, dc), g)

    parts = ws.rows(x2.shape[0], x2.shape[1] * x2.itemsize, piece, tl.g)
    _, n, mean, m2 = parts[0]
    for _, nb, mb, m2b in parts[1:]:  # Chan et al.: merge (n, mean, M2) of two disjoint sets
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (n * nb / total)
        n = total
    return mean, m2 / n, {r0: mb - mean for r0, _, mb, _ in parts}


def batchnorm_train_forward(x, gamma, beta, eps: float, inplace: bool = False, ws: Workspace | None = None,
                            relu: bool = False):
    """Returns y and the cache backward needs, plus (mean, biased var).

    inplace: x may be overwritten (it becomes the cache's centred copy), saving an activation-sized array.
    relu: y = max(gamma * xhat + beta, 0), the ReLU that follows fused in (its mask joins the cache).

    The cache keeps d = x - (its piece's mean) from the statistics pass, not xhat: with delta_p =
    piece mean - batch mean, xhat = (d + delta_p) * invstd, so y = d * s + (beta + delta_p * s) with
    s = gamma * invstd, two passes a piece where centring on the batch mean again and scaling
    would take four. delta_p is of the order of std / sqrt(piece rows): d is as well centred as
    x - mean, so no precision is lost to cancellation (unlike y = x * s + t, PyTorch's CPU form).
    """
    ws = ws or WHOLE
    xp = array_module(x)
    x2 = flat_rows(x)
    d2 = x2 if inplace else xp.empty_like(x2)
    mean, var, deltas = _moments(x2, ws, d2)
    invstd = 1.0 / xp.sqrt(var + eps)
    scale = gamma * invstd
    y = xp.empty_like(x2)
    keep = xp.empty(x2.shape, bool) if relu else None
    tl = Tiled(x2, scale, xp.zeros_like(scale))

    def piece(r0, r1, pws):
        g = tl.group(r0, r1)
        sc, zero = tl.vecs[g]
        yc = tl.view(y, r0, r1, g)
        xp.multiply(tl.view(d2, r0, r1, g), sc, out=yc)
        yc += tl.tile(pws, "bn_shift", beta + deltas[r0] * scale, g)
        if relu:
            xp.greater(yc, zero, out=tl.view(keep, r0, r1, g))
            xp.maximum(yc, zero, out=yc)  # (against a vector: NumPy's loop for a scalar 0 is 2x slower)

    ws.rows(x2.shape[0], x2.shape[1] * x2.itemsize, piece, tl.g)
    return y.reshape(x.shape), (d2, invstd, keep, deltas), mean, var


def update_running(running_mean, running_var, mean, var, m: int, momentum: float) -> None:
    """PyTorch's update, in place: the running variance uses the unbiased batch variance."""
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += momentum * var * (m / max(m - 1, 1))


def batchnorm_eval_forward(x, gamma, beta, running_mean, running_var, eps: float, ws: Workspace | None = None,
                           relu: bool = False):
    ws = ws or WHOLE
    xp = array_module(x)
    scale = gamma / xp.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    x2 = flat_rows(x)
    y = xp.empty_like(x2)
    tl = Tiled(x2, scale, shift)

    def piece(r0, r1, pws):
        g = tl.group(r0, r1)
        sc, sh = tl.vecs[g]
        yc = tl.view(y, r0, r1, g)
        xp.multiply(tl.view(x2, r0, r1, g), sc, out=yc)
        yc += sh
        if relu:
            xp.maximum(yc, 0, out=yc)

    ws.rows(x2.shape[0], x2.shape[1] * x2.itemsize, piece, tl.g)
    return y.reshape(x.shape)


def batchnorm_backward(dy, cache, gamma, ws: Workspace | None = None):
    """(dx, dgamma, dbeta) of batchnorm_train_forward; dy is left untouched, the cache is used up
    (dx is computed in the buffer of its centred copy d).

    In the forward's pieces, with xhat = (d + delta_p) * invstd (see batchnorm_train_forward)::

        dgamma = invstd * sum_p (sum(dz * d) + delta_p * sum(dz))
        dx     = k * (dz + a * d + (a * delta_p - dbeta / M)),   k = gamma * invstd, a = -invstd * dgamma / M

    dz (dy through the fused ReLU's mask) is made once, in the first pass, into a scratch array
    the second pass reads back."""
    ws = ws or WHOLE
    xp = array_module(dy)
    d2, invstd, keep, deltas = cache
    dy2 = flat_rows(dy)
    m, c = dy2.shape
    tl = Tiled(dy2)
    dz2 = dy2 if keep is None else ws.get(xp, "bn_dz", dy2.shape, dy2.dtype)

    def sums(r0, r1, pws):
        g = tl.group(r0, r1)
        dz = tl.view(dz2, r0, r1, g)
        if keep is not None:
            xp.multiply(tl.view(dy2, r0, r1, g), tl.view(keep, r0, r1, g), out=dz)
        db = tl.fold(dz.sum(axis=0), g)
        return db, tl.fold(xp.einsum("ij,ij->j", dz, tl.view(d2, r0, r1, g)), g) + deltas[r0] * db

    parts = ws.rows(m, c * dy2.itemsize, sums, tl.g)
    dbeta, dgd = parts[0][0].copy(), parts[0][1].copy()
    for db, dg in parts[1:]:
        dbeta += db
        dgd += dg
    dgamma = dgd * invstd
    a = -invstd * dgamma / m
    coef = Tiled(dy2, a, gamma * invstd)

    def apply(r0, r1, pws):
        g = tl.group(r0, r1)
        av, kk = coef.vecs[g]
        dx = tl.view(d2, r0, r1, g)  # written over d
        dx *= av
        dx += tl.view(dz2, r0, r1, g)
        dx += tl.tile(pws, "bn_shift", a * deltas[r0] - dbeta / m, g)
        dx *= kk

    ws.rows(m, c * dy2.itemsize, apply, tl.g)
    return d2.reshape(dy.shape), dgamma, dbeta
