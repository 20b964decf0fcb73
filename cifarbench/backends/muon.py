"""Muon's pieces that every backend shares, framework-free (the update rule is in base.py's docstring).

Written from the published description of the optimizer behind the airbench94_muon CIFAR-10
record (Keller Jordan, 2024): nesterov momentum on the raw gradient, then the update is replaced
by an approximate orthogonalisation (U V^T of its SVD, singular values pushed into about 0.5-1.5)
computed by a few steps of a quintic Newton-Schulz iteration, scaled to the filter.

``newton_schulz`` uses only ``@``, ``*``, ``+``, ``/`` and ``.swapaxes``, which NumPy, CuPy,
torch, MLX and JAX arrays all have, so each backend calls this one function with its own
Frobenius norm (and dtype: torch runs it in bf16 on CUDA). It takes a batch of same-shape
matrices (..., rows, cols): torch stacks the filters of one shape into a single batched call.
"""

from __future__ import annotations

from typing import Callable, Sequence

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # (a, b, c) of X <- a X + (b A + c A^2) X, A = X X^T (published)
NS_STEPS = 3  # airbench94_muon's count
NORM_EPS = 1e-7  # added to ||G||_F before dividing (a zero gradient stays zero)


def newton_schulz(g, steps: int, fro: Callable, coeffs: Sequence[float] = NS_COEFFS):
    """Approximately orthogonalise each matrix of ``g`` (..., rows, cols).

    ``fro(x)``: the Frobenius norm of each matrix, with the two last axes kept (size 1). The
    iteration runs on the wide orientation (rows <= cols), where A = X X^T is the small Gram matrix.
    """
    a, b, c = coeffs
    x = g / (fro(g) + NORM_EPS)
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.swapaxes(-1, -2)
    for _ in range(steps):
        gram = x @ x.swapaxes(-1, -2)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.swapaxes(-1, -2) if tall else x


def muon_params(param_shapes: dict[str, Sequence[int]]) -> tuple[str, ...]:
    """The parameters Muon steps: every trainable 4-D tensor (conv filters), in spec order."""
    return tuple(k for k, shape in param_shapes.items() if len(shape) == 4)


def ramp(steps_taken, n: int):
    """``max(0, 1 - t / n)`` for ``frozen_after`` (works on Python numbers; backends trace their own)."""
    return max(0.0, 1.0 - float(steps_taken) / n) if n else 1.0
