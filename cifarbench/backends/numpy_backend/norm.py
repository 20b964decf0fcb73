"""Batch normalisation over the channel axis (last axis: x is viewed as (M, C), M = N*H*W).

Training, per channel c over the M values of the batch::

    mu = mean(x)            var = mean((x - mu)^2)      (biased: used to normalise)
    xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta
    running_mean = (1 - m) * running_mean + m * mu
    running_var  = (1 - m) * running_var  + m * var * M / (M - 1)   (unbiased, as PyTorch)

Eval: the same affine map with the running statistics, so one image's output does not depend
on the other images of its batch (test accuracy is independent of the test batch size).

Backward (dy -> dx), with sums over the M rows::

    dbeta  = sum(dy)
    dgamma = sum(dy * xhat)
    dx = gamma / sqrt(var + eps) * (dy - dbeta / M - xhat * dgamma / M)
"""

from __future__ import annotations

from cifarbench.backends.numpy_backend.arrays import array_module


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def batchnorm_train_forward(x, gamma, beta, eps: float, inplace: bool = False):
    """Returns y and the cache (xhat, invstd) backward needs, plus (mean, biased var).

    inplace: x may be overwritten (it becomes xhat), saving an activation-sized array.
    """
    xp = array_module(x)
    x2 = _rows(x)
    m = x2.shape[0]
    mean = x2.sum(axis=0) / m
    if inplace:
        x2 -= mean
        xhat = x2
    else:
        xhat = x2 - mean  # becomes xhat in place below
    var = xp.einsum("ij,ij->j", xhat, xhat) / m  # sum of squares without a temporary
    invstd = 1.0 / xp.sqrt(var + eps)
    xhat *= invstd
    y = xhat * gamma
    y += beta
    return y.reshape(x.shape), (xhat, invstd), mean, var


def update_running(running_mean, running_var, mean, var, m: int, momentum: float) -> None:
    """PyTorch's update, in place: the running variance uses the unbiased batch variance."""
    running_mean *= 1.0 - momentum
    running_mean += momentum * mean
    running_var *= 1.0 - momentum
    running_var += momentum * var * (m / max(m - 1, 1))


def batchnorm_eval_forward(x, gamma, beta, running_mean, running_var, eps: float):
    xp = array_module(x)
    scale = gamma / xp.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    y = x * scale
    y += shift
    return y


def batchnorm_backward(dy, cache, gamma):
    """(dx, dgamma, dbeta) of batchnorm_train_forward; dy is left untouched, the cache is used up
    (dx is computed in xhat's buffer: no temporaries)."""
    xhat, invstd = cache
    dy2 = _rows(dy)
    m = dy2.shape[0]
    dbeta = dy2.sum(axis=0)
    dgamma = array_module(dy).einsum("ij,ij->j", dy2, xhat)
    # dx = (gamma*invstd) * (dy - dbeta/M - xhat*dgamma/M), written over xhat
    dx = xhat
    dx *= -dgamma / m
    dx += dy2
    dx -= dbeta / m
    dx *= gamma * invstd
    return dx.reshape(dy.shape), dgamma, dbeta
