"""Resizing batches on the device (``--image-size``): bilinear, then a centre crop. Framework-free.

The data stay at their own size on the host and on the device; each backend resizes every batch
after normalising it. The resize is PyTorch's ``F.interpolate(x, (S, S), mode="bilinear",
align_corners=False)`` without antialiasing (from 32 px it only ever enlarges, where antialiasing
changes nothing), followed by torchvision's ``CenterCrop(C)`` (top = round((S - C) / 2)). Output
pixel ``o`` of a side of ``n_in`` input pixels reads the source coordinate
``src = max(0, (o + 0.5) * n_in / S - 0.5)``, between pixels ``i0 = floor(src)`` and
``i1 = min(i0 + 1, n_in - 1)`` with weight ``l = src - i0`` on ``i1``.

Because bilinear interpolation is separable and linear, resize + crop of one side is a (C, n_in)
matrix ``R`` (two non-zero weights per row), and a batch is ``R @ x @ R.T`` over the H and W axes:
one pair of matmuls every backend has (NumPy/CuPy, MLX, JAX at full float32 precision; torch calls
``F.interpolate`` itself and slices the crop). Normalising first and resizing after is the same as the
other way round (the weights of a row sum to one and the normalisation is affine per channel).

``reference_resize`` is the same definition written as gathers, for the tests.
"""

from __future__ import annotations

import math

import numpy as np


def resize_plan(image_size: int | None, crop_pct: float = 1.0) -> tuple[int, int] | None:
    """(resize to, centre crop) for ``--image-size`` and timm's ``crop_pct``; None when not resizing.

    menzHSE's fine-tuning (resize 256, centre-crop 224): image_size 224, crop_pct 0.875.
    """
    if not image_size:
        return None
    return int(math.floor(image_size / crop_pct + 1e-9)), int(image_size)


def source_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, l) per output pixel of one side (float64 coordinates, PyTorch's rule)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def crop_start(size: int, crop: int) -> int:
    return int(round((size - crop) / 2.0))


def resize_matrix(n_in: int, size: int, crop: int) -> np.ndarray:
    """float32 (crop, n_in): rows ``crop_start .. +crop`` of the bilinear (size, n_in) matrix."""
    if crop > size:
        raise ValueError(f"cannot centre-crop {crop} pixels out of {size}")
    i0, i1, lam = source_index(n_in, size)
    m = np.zeros((size, n_in), np.float64)
    rows = np.arange(size)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    top = crop_start(size, crop)
    return np.ascontiguousarray(m[top : top + crop], dtype=np.float32)


def resize_nchw(x: np.ndarray, size: int, crop: int) -> np.ndarray:
    """NCHW float32 on the host, the way the backends do it (for one-off images, e.g. ``activations``)."""
    rh, rw = resize_matrix(x.shape[2], size, crop), resize_matrix(x.shape[3], size, crop)
    return np.ascontiguousarray(rh @ np.asarray(x, np.float32) @ rw.T, dtype=np.float32)


def reference_resize(x: np.ndarray, size: int, crop: int) -> np.ndarray:
    """NCHW float: bilinear resize to size x size by explicit gathers, then the centre crop (float64)."""
    x = np.asarray(x, np.float64)
    h0, h1, lh = source_index(x.shape[2], size)
    w0, w1, lw = source_index(x.shape[3], size)
    top, left = crop_start(size, crop), crop_start(size, crop)
    h0, h1, lh = h0[top : top + crop], h1[top : top + crop], lh[top : top + crop, None]
    w0, w1, lw = w0[left : left + crop], w1[left : left + crop], lw[left : left + crop]
    a, b = x[:, :, h0][:, :, :, w0], x[:, :, h0][:, :, :, w1]
    c, d = x[:, :, h1][:, :, :, w0], x[:, :, h1][:, :, :, w1]
    return (1 - lh) * ((1 - lw) * a + lw * b) + lh * ((1 - lw) * c + lw * d)
