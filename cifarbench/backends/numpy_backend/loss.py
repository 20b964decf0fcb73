"""Mean softmax cross-entropy with label smoothing (PyTorch semantics).

With logits z (N, K), log-probabilities ``lp = z - logsumexp(z)`` and smoothing eps::

    loss_i = (1 - eps) * (-lp[i, y_i]) + eps * mean_c(-lp[i, c])
    loss   = mean_i loss_i

The gradient is the softmax minus the smoothed target, over N::

    dz = (softmax(z) - q) / N,   q = (1 - eps) * onehot(y) + eps / K
"""

from __future__ import annotations

from cifarbench.backends.numpy_backend.arrays import array_module


def log_softmax(z):
    xp = array_module(z)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(z, y, eps: float = 0.0):
    """Returns (per-sample losses (N,), dloss_mean/dz (N, K), correct-prediction count as 0-d array)."""
    xp = array_module(z)
    n, k = z.shape
    lp = log_softmax(z)
    rows = xp.arange(n)
    nll = -lp[rows, y]
    per_sample = (1.0 - eps) * nll - eps * lp.mean(axis=1) if eps else nll
    grad = xp.exp(lp)
    grad[rows, y] -= 1.0 - eps
    if eps:
        grad -= eps / k
    grad /= n
    correct = (z.argmax(axis=1) == y).sum()
    return per_sample, grad, correct
