"""Seeded random CIFAR-shaped data for throughput runs and offline smoke tests.

Each class has a smooth random prototype image (8x8 blocks upsampled); a sample is its class
prototype plus pixel noise. A model can therefore learn the labels (a useful smoke signal),
while the pixels stay random enough to exercise every code path.
"""

from __future__ import annotations

import numpy as np

from cifarbench.data.dataset import Dataset
from cifarbench.errors import UsageError


def make_synthetic(
    n_train: int = 5000,
    n_test: int = 1000,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    noise: int = 80,  # half-width of the uniform pixel noise (std about noise / 1.7)
) -> Dataset:
    if min(n_train, n_test) < 0 or num_classes < 1 or image_size < 1 or channels not in (1, 3):
        raise UsageError("synthetic data needs n_train, n_test >= 0, num_classes >= 1, image_size >= 1, channels 1 or 3")
    rng = np.random.default_rng(seed)
    block = max(1, image_size // 8)
    coarse = rng.uniform(0, 255, size=(num_classes, -(-image_size // block), -(-image_size // block), channels))
    protos = coarse.repeat(block, axis=1).repeat(block, axis=2)[:, :image_size, :image_size].astype(np.int16)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)  # balanced classes
        # integer uniform noise: several times faster to draw than Gaussian floats
        x = protos[y] + rng.integers(-noise, noise + 1, size=(n, image_size, image_size, channels), dtype=np.int16)
        return np.clip(x, 0, 255, out=x).astype(np.uint8), y

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return Dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=[f"class{i}" for i in range(num_classes)],
        source=f"generated (seed {seed})",
    )
