"""Data on the device: uint8 splits uploaded once, per-epoch draws, vectorised augmentation.

Each batch is gathered as uint8 NHWC, zero-padded once, and cropped + mirrored by a single
advanced-indexing gather (the flip is folded into the column index), then converted to float
and normalised. Permuting NHWC to NCHW gives a channels_last tensor for free.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cifarbench.backends.base import TrainOptions
from cifarbench.backends.resize import crop_start
from cifarbench.errors import UsageError


class DeviceData:
    def __init__(self, device: torch.device, options: TrainOptions, channels_last: bool):
        self.device = device
        self.channels_last = channels_last
        self.pad = int(options.crop_pad)
        self.flip = bool(options.flip)
        mean = torch.tensor(options.mean, dtype=torch.float32)
        std = torch.tensor(options.std, dtype=torch.float32)
        # (x / 255 - mean) / std  ==  x * scale + shift, one fused multiply-add per pixel
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
        self._shift = (-mean / std).view(1, -1, 1, 1).to(device)
        self.resize = options.resize
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.order: torch.Tensor | None = None
        self.offsets: torch.Tensor | None = None
        self.flips: torch.Tensor | None = None

    # ----- uploads ---------------------------------------------------------------------
    def set_split(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        if x.dtype != np.uint8 or x.ndim != 4:
            raise UsageError(f"split '{split}': images must be uint8 NHWC, got {x.dtype} with shape {x.shape}")
        if len(y) != len(x):
            raise UsageError(f"split '{split}': {len(x)} images but {len(y)} labels")
        channels = x.shape[3]
        if channels != self._scale.shape[1] and self._scale.shape[1] != 1:
            raise UsageError(f"split '{split}': {channels} channels but mean/std give {self._scale.shape[1]}")
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)
        self.splits[split] = (xt, yt)

    def begin_epoch(self, order: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None) -> None:
        if "train" not in self.splits:
            raise UsageError("set_data('train', ...) must come before begin_epoch")
        n = len(order)
        self.order = torch.from_numpy(np.asarray(order, dtype=np.int64)).to(self.device)
        self.offsets = None
        self.flips = None
        if offsets is not None and self.pad > 0:
            off = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
            if off.min(initial=0) < 0 or off.max(initial=0) > 2 * self.pad:
                raise UsageError(f"crop offsets must lie in [0, {2 * self.pad}]")
            self.offsets = torch.from_numpy(off).to(self.device)
        if flips is not None and self.flip:
            self.flips = torch.from_numpy(np.asarray(flips, dtype=bool).reshape(n)).to(self.device)

    # ----- batches ---------------------------------------------------------------------
    def train_batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised float32 NCHW images and labels for order[start:stop]."""
        if self.order is None:
            raise UsageError("begin_epoch must come before train_step")
        x_all, y_all = self.splits["train"]
        idx = self.order[start:stop]
        x = x_all.index_select(0, idx)
        offsets = None if self.offsets is None else self.offsets[start:stop]
        flips = None if self.flips is None else self.flips[start:stop]
        x = self.augment(x, offsets, flips)
        return self.normalise(x), y_all.index_select(0, idx)

    def eval_batch(self, split: str, start: int, stop: int) -> torch.Tensor:
        x_all, _ = self.splits[split]
        return self.normalise(x_all[start:stop])

    def augment(self, x: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
        """Crop (on the zero-padded uint8 image) then mirror; x is uint8 NHWC."""
        if offsets is None and flips is None:
            return x
        n, h, w, _ = x.shape
        rows = torch.arange(h, device=x.device).expand(n, h)
        cols = torch.arange(w, device=x.device).expand(n, w)
        if flips is not None:
            # img[:, ::-1] after the crop reads crop column w-1-j for output column j
            cols = torch.where(flips[:, None], (w - 1) - cols, cols)
        if offsets is not None:
            p = self.pad
            x = F.pad(x, (0, 0, p, p, p, p))  # NHWC: pad W and H, not C
            rows = rows + offsets[:, 0:1]
            cols = cols + offsets[:, 1:2]
        batch = torch.arange(n, device=x.device)[:, None, None]
        return x[batch, rows[:, :, None], cols[:, None, :]]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float32 NCHW (channels_last storage if asked)."""
        x = x.permute(0, 3, 1, 2)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt).float() * self._scale + self._shift
        if self.resize is None:
            return x
        # torch's own op is the definition backends/resize.py writes down (and no TF32 matmul on CUDA)
        size, crop = self.resize
        top = crop_start(size, crop)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        return x[:, :, top : top + crop, top : top + crop].contiguous(memory_format=fmt)

    def size(self, split: str) -> int:
        if split not in self.splits:
            raise UsageError(f"split '{split}' was never set with set_data; have: {', '.join(self.splits) or 'none'}")
        return len(self.splits[split][0])
