"""The in-memory data set every backend receives: uint8 NHWC images, int64 labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cifarbench.errors import DataError


@dataclass(eq=False)
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    warnings: list[str] = field(default_factory=list)  # e.g. checksum mismatches; the CLI prints them
    source: str = ""  # folder or file the arrays came from ("generated" for synthetic)
    _stats: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise DataError(f"{self.name}: x_{split} must be uint8 NHWC, got {x.dtype} {x.shape}")
            if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
                raise DataError(f"{self.name}: y_{split} must be {len(x)} integer labels, got {y.dtype} {y.shape}")
            if y.dtype != np.int64:
                setattr(self, f"y_{split}", y.astype(np.int64))
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: train {self.x_train.shape[1:]} and test {self.x_test.shape[1:]} images differ")

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[3])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of x_train in [0, 1] pixel units."""
        return self._moments()[0]

    def std(self) -> tuple[float, ...]:
        """Per-channel population standard deviation of x_train in [0, 1] pixel units."""
        return self._moments()[1]

    def _moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # Exact moments from a 256-bin histogram per channel, built in chunks: no float copy of
        # the whole training set (CIFAR-10 as float64 would take 1.2 GB) and cache-friendly.
        if "moments" not in self._stats:
            c = self.channels
            hist = np.zeros((c, 256), dtype=np.int64)
            for start in range(0, len(self.x_train), 2048):
                pixels = self.x_train[start : start + 2048].reshape(-1, c)
                for ch in range(c):
                    hist[ch] += np.bincount(pixels[:, ch], minlength=256)
            levels = np.arange(256, dtype=np.float64) / 255.0
            p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
            means = p @ levels
            var = (p * (levels[None, :] - means[:, None]) ** 2).sum(axis=1)
            means, stds = tuple(float(m) for m in means), tuple(float(v) for v in np.sqrt(var))
            self._stats["moments"] = (tuple(means), tuple(stds))
        return self._stats["moments"]

    def summary(self) -> dict:
        """JSON-ready description (used by `cifarbench data info`)."""
        return {
            "name": self.name,
            "train": int(len(self.x_train)),
            "test": int(len(self.x_test)),
            "image_shape": [int(s) for s in self.x_train.shape[1:]],
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "mean": [round(v, 6) for v in self.mean()],
            "std": [round(v, 6) for v in self.std()],
            "source": self.source,
            "warnings": list(self.warnings),
        }
