"""Small data files in the official formats, for tests that must not touch the network.

They are the same formats the loaders read (CIFAR protocol-2 pickles with bytes keys and
planar RGB rows; gzip idx files), only with a handful of images, so their checksums never
match the official release.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from cifarbench.data.sources import CIFAR10, CIFAR100


def random_images(rng: np.random.Generator, n: int, size: int = 32, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def _pickle_batch(path: Path, x: np.ndarray, labels: dict[bytes, list[int]]) -> None:
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # NHWC -> planar RGB rows of 3072 bytes
    entry = {b"batch_label": b"testing batch", b"data": np.ascontiguousarray(rows), **labels}
    path.write_bytes(pickle.dumps(entry, protocol=2))


def write_cifar10(folder: Path, per_batch: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/ under ``folder``; returns the NHWC arrays and labels written."""
    rng = np.random.default_rng(seed)
    out = folder / CIFAR10.folder
    out.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = random_images(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        _pickle_batch(out / name, x, {b"labels": y})
        xs.append(x)
        ys.append(np.array(y, dtype=np.int64))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "x_train": np.concatenate(xs[:5]),
        "y_train": np.concatenate(ys[:5]),
        "x_test": xs[5],
        "y_test": ys[5],
    }


def write_cifar100(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """cifar-100-python/ under ``folder``; fine label = coarse * 5 + k, as in a real hierarchy."""
    rng = np.random.default_rng(seed)
    out = folder / CIFAR100.folder
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = random_images(rng, n)
        coarse = rng.integers(0, 20, n)
        fine = coarse * 5 + rng.integers(0, 5, n)
        _pickle_batch(out / split, x, {b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()})
        arrays.update({f"x_{split}": x, f"y_fine_{split}": fine, f"y_coarse_{split}": coarse})
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (out / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return arrays


def idx_bytes(arr: np.ndarray) -> bytes:
    """An idx ubyte file: magic (0, 0, 0x08, ndim), big-endian dims, raw bytes."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, seed: int = 0):
    """The four MNIST-style files (train-images-idx3-ubyte[.gz], ...) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                # mtime=0: the same arrays give the same bytes (stable md5 within a test)
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
        arrays.update({f"x_{split}": x[..., None], f"y_{split}": y.astype(np.int64)})
    return arrays


def tar_folder(src_root: Path, folder_name: str, archive: Path) -> Path:
    """A .tar.gz holding ``src_root/folder_name`` as its top-level folder (the official layout)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_root / folder_name, arcname=folder_name)
    return archive


def tar_with_members(archive: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A .tar.gz with arbitrary member names (e.g. '../evil') and symlinks, for safety tests."""
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return archive
