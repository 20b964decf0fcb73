"""The NumPy reference of the epoch augmentation in the backend contract (backends/base.py).

For sample i of an epoch (image ``order[i]``), with pad P:
``img = zero_pad_uint8(x, P)[dy:dy+H, dx:dx+W]`` with ``(dy, dx) = offsets[i]`` in [0, 2P];
if ``flips[i]``: ``img = img[:, ::-1]``; then ``(img / 255 - mean) / std`` per channel.

Every backend's on-device version is tested against ``apply_numpy``; the NumPy backend can
use it directly. Both functions are vectorised: one gather per batch, no loop over images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cifarbench.errors import UsageError


def draw_epoch(
    rng: np.random.Generator, n: int, crop_pad: int, flip: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(order, offsets, flips) for one epoch: a permutation of n, (n, 2) int64 crop offsets in
    [0, 2*crop_pad] (None when crop_pad is 0), and n bools (None when flip is off).

    All three are always drawn, in this order, so turning crop or flip off leaves the data
    order and the other augmentation unchanged for the same generator state.
    """
    if crop_pad < 0:
        raise UsageError(f"crop padding must be >= 0, got {crop_pad}")
    order = rng.permutation(n).astype(np.int64)
    offsets = rng.integers(0, 2 * crop_pad + 1, size=(n, 2), dtype=np.int64)
    flips = rng.random(n) < 0.5
    return order, (offsets if crop_pad > 0 else None), (flips if flip else None)


def alternate_flips(seed: int, order: np.ndarray, epoch: int, n: int) -> np.ndarray:
    """Flips of the "alternating" scheme for the samples ``order`` of this epoch.

    Epoch 0 flips each image with probability 1/2 (one draw per image, fixed by the run seed);
    every later epoch flips exactly the images the previous epoch left unflipped, so over any
    two epochs each image is seen once each way. A pure function of (seed, epoch): resumable.
    """
    base = np.random.default_rng([int(seed) & 0xFFFF_FFFF, 0xF11B]).random(n) < 0.5
    per_image = base if epoch % 2 == 0 else ~base
    return per_image[np.asarray(order)]


def _per_channel(values: Sequence[float] | float, channels: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise UsageError(f"{what} has {arr.size} values for {channels} channels")
    return arr.reshape(1, channels, 1, 1)


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, ``(x / 255 - mean) / std`` per channel (the eval transform)."""
    c = x.shape[-1]
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # transpose the uint8 array: 4x less to move
    out = nchw.astype(np.float32) / np.float32(255.0)
    out -= _per_channel(mean, c, "mean")
    out /= _per_channel(std, c, "std")
    return out


def apply_numpy(
    x: np.ndarray,
    order: np.ndarray,
    offsets: np.ndarray | None,
    flips: np.ndarray | None,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """Augmented, normalised float32 NCHW batch for the samples ``x[order]``.

    ``order``/``offsets``/``flips`` are the slices of one step (e.g. ``order[start:stop]``).
    """
    b, h, w = len(order), x.shape[1], x.shape[2]
    rows = np.broadcast_to(np.arange(h), (b, h))
    cols = np.broadcast_to(np.arange(w), (b, w))
    src = x
    if pad > 0 and offsets is not None:
        offsets = np.asarray(offsets)
        if offsets.shape != (b, 2) or offsets.min(initial=0) < 0 or offsets.max(initial=0) > 2 * pad:
            raise UsageError(f"offsets must be ({b}, 2) values in [0, {2 * pad}]")
        src = np.pad(x[order], ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # black border, pixel space
        order = np.arange(b)  # src is already in batch order
        rows = rows + offsets[:, :1]
        cols = cols + offsets[:, 1:]
    if flips is not None:
        cols = np.where(np.asarray(flips, dtype=bool)[:, None], cols[:, ::-1], cols)
    # one fancy-index gather: (b, 1, 1) images x (b, h, 1) rows x (b, 1, w) columns -> (b, h, w, c)
    batch = src[np.asarray(order)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return normalize(batch, mean, std)
