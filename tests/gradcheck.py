"""Central finite differences for the float64 gradient checks (shared by the NumPy-backend tests)."""

from __future__ import annotations

import numpy as np

H = 1e-6  # float64 central differences: error ~ H^2 * f''' + eps / H ~ 1e-10


def numgrad(f, a: np.ndarray) -> np.ndarray:
    """d f() / d a by central differences; f reads a (which is perturbed in place)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        fp = f()
        flat[i] = old - H
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * H)
    return g
