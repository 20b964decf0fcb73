"""Data sets as uint8 NHWC arrays: download, verify, parse, cache, split.

Names: cifar10, cifar100 (fine labels), cifar100-coarse, mnist, fashion-mnist, mnist-mini (a real
MNIST subset shipped in the package, see embedded.py), synthetic, and ``npz:PATH`` (keys x_train,
y_train, x_test, y_test[, class_names]).
Data dir precedence: the ``data_dir`` argument (--data-dir) > $CIFARBENCH_DATA > the user cache
dir. Nothing in this package prints; download progress goes to a callback and checksum
warnings to ``Dataset.warnings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cifarbench.data.dataset import Dataset
from cifarbench.data.fetch import ProgressFn
from cifarbench.data.sources import DATASET_NAMES, canonical_name
from cifarbench.data.store import FileCheck, default_data_dir, download_dataset, load_official, verify_dataset
from cifarbench.data.synthetic import make_synthetic
from cifarbench.errors import UsageError

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "FileCheck",
    "default_data_dir",
    "download_dataset",
    "load_dataset",
    "make_synthetic",
    "split_validation",
    "verify_dataset",
]


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: ProgressFn | None = None,
    mirrors: Sequence[str] | str | None = None,
) -> Dataset:
    """Load a data set by name (see the module docstring); raises UsageError/DataError."""
    canon = canonical_name(name)
    if canon == "synthetic":
        return make_synthetic()
    if canon == "mnist-mini":
        from cifarbench.data.embedded import load_embedded

        return load_embedded()
    if canon.startswith("npz:"):
        return _load_npz(canon)
    return load_official(canon, data_dir, download, progress, mirrors)


def _load_npz(canon: str) -> Dataset:
    from cifarbench.data.formats import parse_npz

    path = Path(canon[4:]).expanduser()
    arrays, names = parse_npz(path)
    return Dataset(name=canon, class_names=names, source=str(path), **arrays)


def split_validation(
    x: np.ndarray, y: np.ndarray, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val): a seeded, class-stratified hold-out of n_val samples.

    Each class gives its share of n_val (largest remainder), drawn at random with ``seed``; both
    parts keep the original order, so the split depends only on (labels, n_val, seed).
    """
    n = len(y)
    if len(x) != n:
        raise UsageError(f"split_validation: {len(x)} images but {n} labels")
    if not 0 <= n_val < n:
        raise UsageError(f"validation size must be in [0, {n}) for {n} samples, got {n_val}")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    exact = n_val * counts / n
    quota = np.floor(exact).astype(np.int64)
    short = n_val - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    grouped = perm[np.argsort(inverse[perm], kind="stable")]  # random order within each class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - np.repeat(starts, counts)
    is_val = np.zeros(n, dtype=bool)
    is_val[grouped[rank < np.repeat(quota, counts)]] = True
    return x[~is_val], y[~is_val], x[is_val], y[is_val]


def stratified_subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-stratified subset of ``n`` samples in the original order (all of them when
    ``n`` is None or not smaller than the set): the part ``split_validation`` would hold out."""
    if n is None or n >= len(y):
        return x, y
    return split_validation(x, y, n, seed)[2:]
