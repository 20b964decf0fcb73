"""Initialisations that a spec asks for beyond ``init_params``: dirac convs and patch whitening.

Both are backend-agnostic: they rewrite canonical NumPy weights before ``Backend.build``, so
every backend starts from the same point.

- ``Conv.init == "dirac"``: the first ``cin`` filters become the identity (a centre tap of 1
  from input channel i to output channel i), the rest keep their default init; a deep
  stack of such convs starts close to passing its input through.
- ``Conv.init == "whiten"`` (k x k, ``cout == 2 * cin * k * k``): from the normalised
  training images, the second-moment matrix S of all k x k x C patches is decomposed as
  S = V diag(lam) V^T; the filters are v_i / sqrt(lam_i + eps), largest eigenvalue first, and
  then the same filters negated (so a following GELU/ReLU keeps both signs). The first half
  of the outputs is then a whitened view of each patch: its second moment is ~ the identity.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cifarbench.data.augment import normalize
from cifarbench.errors import UsageError
from cifarbench.models.spec import Conv, ModelSpec

WHITEN_EPS = 5e-4  # in normalised pixel units squared; tames the near-zero eigenvalues
WHITEN_IMAGES = 5000  # the first images of the training split are plenty for a 12x12 matrix
CHUNK = 500


def special_convs(spec: ModelSpec) -> list[Conv]:
    return [l for l in spec.param_layers() if isinstance(l, Conv) and l.init != "default"]


def patch_moment(x_nchw: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Sum over all k x k patches (stride 1, no padding) of p p^T, p flattened in C, kh, kw
    order (OIHW's I, H, W), and the number of patches."""
    n, c, h, w = x_nchw.shape
    ho, wo = h - k + 1, w - k + 1
    taps = [x_nchw[:, :, i : i + ho, j : j + wo] for i in range(k) for j in range(k)]
    # (n, c, k*k, ho, wo) -> rows of (c, kh, kw)
    p = np.stack(taps, axis=2).transpose(0, 3, 4, 1, 2).reshape(-1, c * k * k).astype(np.float64)
    return p.T @ p, p.shape[0]


def whitening_filters(x_nchw_chunks, cin: int, k: int, eps: float = WHITEN_EPS) -> np.ndarray:
    """(2 * cin * k * k, cin, k, k) float32 filters from an iterable of NCHW float batches."""
    dim = cin * k * k
    total, count = np.zeros((dim, dim)), 0
    for chunk in x_nchw_chunks:
        s, m = patch_moment(chunk, k)
        total += s
        count += m
    if count == 0:
        raise UsageError("patch whitening needs at least one training image")
    lam, vecs = np.linalg.eigh(total / count)  # ascending
    lam, vecs = lam[::-1], vecs[:, ::-1]
    filters = (vecs / np.sqrt(np.maximum(lam, 0.0) + eps)).T.reshape(dim, cin, k, k)
    return np.concatenate([filters, -filters]).astype(np.float32)


def dirac(weight: np.ndarray) -> np.ndarray:
    out = np.array(weight, np.float32, copy=True)
    cout, cin, kh, kw = out.shape
    m = min(cin, cout)
    out[:m] = 0.0
    out[np.arange(m), np.arange(m), kh // 2, kw // 2] = 1.0
    return out


def data_init(
    spec: ModelSpec, state: dict[str, np.ndarray], x_train: np.ndarray,
    mean: Sequence[float], std: Sequence[float], max_images: int = WHITEN_IMAGES,
) -> dict[str, np.ndarray]:
    """``state`` with the spec's dirac/whitening convs set; the same dict when none asks."""
    convs = special_convs(spec)
    if not convs:
        return state
    out = dict(state)
    for conv in convs:
        key = f"{conv.name}.weight"
        if conv.init == "dirac":
            out[key] = dirac(out[key])
        elif conv.init == "whiten":
            if conv.cout != 2 * conv.cin * conv.k * conv.k or conv.stride != 1 or conv.pad != 0:
                raise UsageError(f"{conv.name}: a whitening conv needs stride 1, no padding and 2*cin*k*k outputs")
            x = x_train[:max_images]
            chunks = (normalize(x[i : i + CHUNK], mean, std) for i in range(0, len(x), CHUNK))
            out[key] = whitening_filters(chunks, conv.cin, conv.k)
        else:
            raise UsageError(f"{conv.name}: unknown conv init '{conv.init}'; valid: default, dirac, whiten")
    return out
