"""Training-batch assembly on the device: random crop of the zero-padded uint8 image, flip,
normalise (the contract in cifarbench/backends/base.py), vectorised over the batch.

For sample b with offsets (dy, dx) and pad P, output pixel (r, c) reads the unpadded image at
row ``dy - P + r`` and column ``dx - P + c`` (or ``dx - P + W - 1 - c`` when flipped); a
read outside the image is a black (0) pixel. One gather builds the whole batch.
"""

from __future__ import annotations

from cifarbench.backends.numpy_backend.arrays import array_module
from cifarbench.backends.resize import resize_matrix


def normalise(img_u8, mean, std, dtype):
    """uint8 NHWC -> (img / 255 - mean) / std, float, per channel (mean/std are xp arrays)."""
    out = img_u8.astype(dtype)
    out /= 255.0
    out -= mean
    out /= std
    return out


def crop_flip(x_u8, idx, offsets, flips, pad: int):
    """uint8 (B, H, W, C) batch: images x_u8[idx], cropped from the padded image and flipped."""
    xp = array_module(x_u8)
    n, h, w, c = x_u8.shape
    if offsets is None and flips is None:
        return x_u8[idx]
    rows = xp.arange(h)[None, :] + (offsets[:, 0:1] - pad if offsets is not None else 0)
    cols = xp.broadcast_to(xp.arange(w)[None, :] + (offsets[:, 1:2] - pad if offsets is not None else 0), (len(idx), w))
    if flips is not None:
        cols = xp.where(flips[:, None], cols[:, ::-1], cols)
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    img = x_u8[idx[:, None, None], xp.clip(rows, 0, h - 1)[:, :, None], xp.clip(cols, 0, w - 1)[:, None, :]]
    if pad:
        img *= valid[..., None]
    return img


def make_batch(x_u8, idx, offsets, flips, pad: int, mean, std, dtype, resize=None):
    """The float NHWC training batch for samples idx of the split."""
    return resized(normalise(crop_flip(x_u8, idx, offsets, flips, pad), mean, std, dtype), resize)


def resized(x, resize):
    """NHWC float batch resized + centre-cropped (``resize`` = (S, C), backends/resize.py); as is when None."""
    if resize is None:
        return x
    xp = array_module(x)
    rh, rw = (xp.asarray(resize_matrix(n, *resize)).astype(x.dtype) for n in (x.shape[1], x.shape[2]))
    nchw = x.transpose(0, 3, 1, 2)
    return xp.ascontiguousarray(xp.matmul(xp.matmul(rh, nchw), rw.T).transpose(0, 2, 3, 1))
