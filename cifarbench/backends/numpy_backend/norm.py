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


def _moments(x2, ws: Workspace):
    """Per-channel mean and biased variance of x2 (M, C), piece by piece (two passes over each
    piece while it is in cache), combined in row order."""
    xp = array_module(x2)
    tl = Tiled(x2)

    def piece(r0, r1, pws):
        g = tl.group(r0, r1)
        xc = tl.view(x2, r0, r1, g)
        mean = tl.fold(xc.sum(axis=0), g) / (r1 - r0)
        d = pws.get(xp, "bn_d", xc.shape, xc.dtype)
        xp.subtract(xc, mean if g == 1 else xp.tile(mean, g), out=d)
        return r1 - r0, mean, tl.fold(xp.einsum("ij,ij->j", d, d), g)

    parts = ws.rows(x2.shape[0], x2.shape[1] * x2.itemsize, piece, tl.g)
    n, mean, m2 = parts[0]
    for nb, mb, m2b in parts[1:]:  # Chan et al.: merge (n, mean, M2) of two disjoint sets
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (n * nb / total)
        n = total
    return mean, m2 / n


def batchnorm_train_forward(x, gamma, beta, eps: float, inplace: bool = False, ws: Workspace | None = None,
                            relu: bool = False):
    """Returns y and the cache backward needs, plus (mean, biased var).

    inplace: x may be overwritten (it becomes xhat), saving an activation-sized array.
    relu: y = max(gamma * xhat + beta, 0), the ReLU that follows fused in (its mask joins the cache).
    """
    ws = ws or WHOLE
    xp = array_module(x)
    x2 = flat_rows(x)
    mean, var = _moments(x2, ws)
    invstd = 1.0 / xp.sqrt(var + eps)
    xhat = x2 if inplace else xp.empty_like(x2)
    y = xp.empty_like(x2)
    keep = xp.empty(x2.shape, bool) if relu else None
    tl = Tiled(x2, mean, invstd, gamma, beta)

    def piece(r0, r1, pws):
        g = tl.group(r0, r1)
        mu, inv, ga, be = tl.vecs[g]
        xh, yc = tl.view(xhat, r0, r1, g), tl.view(y, r0, r1, g)
        xp.subtract(tl.view(x2, r0, r1, g), mu, out=xh)
        xh *= inv
        xp.multiply(xh, ga, out=yc)
        yc += be
        if relu:
            kc = tl.view(keep, r0, r1, g)
            xp.greater(yc, 0, out=kc)
            xp.maximum(yc, 0, out=yc)

    ws.rows(x2.shape[0], x2.shape[1] * x2.itemsize, piece, tl.g)
    return y.reshape(x.shape), (xhat, invstd, keep), mean, var


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
    (dx is computed in xhat's buffer)."""
    ws = ws or WHOLE
    xp = array_module(dy)
    xhat, invstd, keep = cache
    dy2 = flat_rows(dy)
    m, c = dy2.shape
    tl = Tiled(dy2)

    def grad_in(r0, r1, g, pws):
        """dz for rows [r0, r1) as a tiled view: dy, or dy where the fused ReLU let the forward through."""
        dyc = tl.view(dy2, r0, r1, g)
        if keep is None:
            return dyc
        t = pws.get(xp, "bn_t", dyc.shape, dyc.dtype)
        xp.multiply(dyc, tl.view(keep, r0, r1, g), out=t)
        return t

    def sums(r0, r1, pws):
        g = tl.group(r0, r1)
        dz = grad_in(r0, r1, g, pws)
        return tl.fold(dz.sum(axis=0), g), tl.fold(xp.einsum("ij,ij->j", dz, tl.view(xhat, r0, r1, g)), g)

    parts = ws.rows(m, c * dy2.itemsize, sums, tl.g)
    dbeta, dgamma = parts[0][0].copy(), parts[0][1].copy()
    for db, dg in parts[1:]:
        dbeta += db
        dgamma += dg
    coef = Tiled(dy2, -dgamma / m, dbeta / m, gamma * invstd)

    def apply(r0, r1, pws):
        g = tl.group(r0, r1)
        dgm, dbm, kk = coef.vecs[g]
        dz = grad_in(r0, r1, g, pws)
        dx = tl.view(xhat, r0, r1, g)  # dx = k * (dz - dbeta/M - xhat*dgamma/M), written over xhat
        dx *= dgm
        dx += dz
        dx -= dbm
        dx *= kk

    ws.rows(m, c * dy2.itemsize, apply, tl.g)
    return xhat.reshape(dy.shape), dgamma, dbeta
