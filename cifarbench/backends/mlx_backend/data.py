"""Getting batches onto the device: the in-memory path and the mlx-data path.

In-memory (default): each split is uploaded once as uint8 NHWC (the train split zero-padded
by ``crop_pad`` once, so a crop is pure index arithmetic); a batch is ONE gather from the flat
(N*Hp*Wp, C) view, the crop offsets and flips folded into the row/column indices.

mlx-data (``extra["loader"] == "mlx-data"``, the seed project's loader): a Buffer of padded
uint8 images, permuted by the engine's epoch order (a fresh, seeded order every epoch; a
Buffer.shuffle() made once would replay one order forever), random crop + h-flip in mlx-data's
own threads, batched and prefetched in order. Its crops/flips come from mlx-data's RNG,
seeded per epoch, not from the engine's draws.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from cifarbench.backends.resize import resize_matrix


class DeviceSplit:
    """A whole split on the device: padded uint8 images, int32 labels."""

    def __init__(self, x: np.ndarray, y: np.ndarray, pad: int):
        n, h, w, c = x.shape
        self.n, self.h, self.w, self.c, self.pad = n, h, w, c, pad
        self.hp, self.wp = h + 2 * pad, w + 2 * pad
        images = mx.array(np.ascontiguousarray(x, dtype=np.uint8))
        if pad:
            images = mx.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
        self.flat = images.reshape(n * self.hp * self.wp, c)
        self.labels = mx.array(np.asarray(y, dtype=np.int32))
        # int32 indices cover 2**31 pixels (e.g. 1.3M images at 40x40); beyond that use int64.
        self.index_dtype = mx.int32 if n * self.hp * self.wp < 2**31 else mx.int64
        mx.eval(self.flat, self.labels)


def gather_batch(split: DeviceSplit, idx: mx.array, offsets: mx.array | None, flips: mx.array | None) -> mx.array:
    """uint8 (B, H, W, C): image idx[i] cropped at offsets[i] (dy, dx) of the padded image, mirrored if flips[i].

    Without offsets the crop is centred, i.e. the unpadded image.
    """
    dt = split.index_dtype
    idx = idx.astype(dt)
    rows = mx.arange(split.h, dtype=dt)[None, :]
    cols = mx.arange(split.w, dtype=dt)[None, :]
    if offsets is None:
        dy = dx = mx.full((idx.shape[0], 1), split.pad, dt)
    else:
        dy, dx = offsets[:, 0:1].astype(dt), offsets[:, 1:2].astype(dt)
    rows = dy + rows
    if flips is not None:
        cols = mx.where(flips[:, None], (split.w - 1) - cols, cols)
    cols = dx + cols
    flat = (idx[:, None, None] * split.hp + rows[:, :, None]) * split.wp + cols[:, None, :]
    return split.flat[flat]


def normalise(x: mx.array, mean: mx.array, std: mx.array, resize: tuple[int, int] | None = None) -> mx.array:
    """uint8 NHWC -> float32 (x / 255 - mean) / std per channel, then resized + centre-cropped
    (``resize`` = (S, C), backends/resize.py) when given."""
    x = (x.astype(mx.float32) / 255.0 - mean) / std
    if resize is None:
        return x
    rh, rw = (mx.array(resize_matrix(n, *resize)) for n in (x.shape[1], x.shape[2]))
    nchw = x.transpose(0, 3, 1, 2)
    return ((rh @ nchw) @ rw.T).transpose(0, 2, 3, 1)


class MLXDataLoader:
    """The mlx-data pipeline for the train split (see module docstring)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, pad: int, flip: bool, prefetch: int = 4, threads: int = 2):
        import mlx.data as dx  # optional dependency, only needed on this path

        self.dx = dx
        self.h, self.w = x.shape[1], x.shape[2]
        self.pad, self.flip, self.prefetch, self.threads = pad, flip, prefetch, threads
        if pad:
            x = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
        self.base = dx.buffer_from_vector(
            [{"image": np.ascontiguousarray(x[i]), "label": np.int64(y[i])} for i in range(len(x))]
        )
        self.order = np.arange(len(x))
        self.stream = None
        self.cursor = 0
        self.batch_size = 0

    def begin_epoch(self, order: np.ndarray, seed: int) -> None:
        self.order = np.asarray(order, dtype=np.int64)
        self.dx.core.set_state(int(seed) % 2**31)
        self.stream = None

    def _open(self, start: int, batch_size: int) -> None:
        buf = self.base.perm(self.order[start:].tolist())
        if self.pad:
            buf = buf.image_random_crop("image", self.w, self.h)
        if self.flip:
            buf = buf.image_random_h_flip("image", 0.5)
        self.stream = buf.batch(batch_size).ordered_prefetch(self.prefetch, self.threads)
        self.cursor, self.batch_size = start, batch_size

    def next_batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images and int64 labels of samples order[start:stop]."""
        size = stop - start
        # Reopen when the engine jumps (resume) or changes the batch size (not for the short last batch).
        if self.stream is None or start != self.cursor or (size != self.batch_size and stop != len(self.order)):
            self._open(start, size)
        batch = self.stream.next()
        self.cursor += len(batch["label"])
        if len(batch["label"]) != size:
            raise RuntimeError(f"mlx-data yielded {len(batch['label'])} samples, expected {size}")
        return batch["image"], batch["label"]
