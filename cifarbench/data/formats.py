"""Parsers of the official file formats into uint8 NHWC images and int64 labels.

- CIFAR "python version": protocol-2 pickles written by Python 2, rows of 3072 bytes in planar
  RGB (1024 R, then G, then B), so ``reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)`` gives NHWC.
  They are read with ``cifarbench.safepickle``'s arrays-only allow-list, so a crafted file
  cannot run code.
- MNIST/Fashion-MNIST idx (big-endian header, then raw bytes), .gz or uncompressed.
- ``npz:PATH``: x_train, y_train, x_test, y_test[, class_names]; NHWC, NCHW or (N, H, W).
A truncated or malformed file raises DataError naming it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from cifarbench import safepickle
from cifarbench.errors import DataError

# Labels index a class table (confusion matrices are classes^2): more classes than this is a
# wrong file, not a data set (ImageNet-21k has about 21,800; CIFAR-100 has 100).
MAX_CLASSES = 10_000


def read_pickle(path: Path) -> dict[str, object]:
    """A CIFAR pickle as a dict with str keys (through the arrays-only unpickler)."""
    try:
        data = path.read_bytes()
        obj = safepickle.loads(data, safepickle.ARRAYS, encoding="bytes")
    except safepickle.LOAD_ERRORS as e:
        raise DataError(f"{path} is truncated or not a CIFAR python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR python pickle (holds a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names(path: Path, entry: dict, key: str) -> list[str]:
    names = entry.get(key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{path} has no '{key}' list")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _cifar_batch(path: Path, label_keys: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    entry = read_pickle(path)
    data = entry.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    labels = {}
    for key in label_keys:
        if key not in entry:
            raise DataError(f"{path} has no '{key}' entry")
        y = as_labels(entry[key], f"{path}: '{key}'")
        if y.shape != (len(data),):
            raise DataError(f"{path}: {len(data)} images but '{key}' has shape {y.shape}")
        labels[key] = y
    # rows are planar RGB: 1024 red, 1024 green, 1024 blue bytes
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels


def parse_cifar(source_key: str, folder: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Arrays x_train/x_test and y_<variant>_<split>, and class-name lists per label variant."""
    if source_key == "cifar10":
        train_files, test_file, meta_file = [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"
        label_keys, variants = ("labels",), {"labels": "label_names"}
    else:
        train_files, test_file, meta_file = ["train"], "test", "meta"
        label_keys = ("fine_labels", "coarse_labels")
        variants = {"fine": "fine_label_names", "coarse": "coarse_label_names"}
    meta = read_pickle(folder / meta_file)
    names = {variant: _names(folder / meta_file, meta, key) for variant, key in variants.items()}
    arrays: dict[str, np.ndarray] = {}
    for split, files in (("train", train_files), ("test", [test_file])):
        parts = [_cifar_batch(folder / f, label_keys) for f in files]
        arrays[f"x_{split}"] = np.concatenate([p[0] for p in parts])
        for variant, key in zip(variants, label_keys):
            for f, part in zip(files, parts):  # name the batch file that holds a bad label
                _check_labels(part[1][key], len(names[variant]), str(folder / f))
            arrays[f"y_{variant}_{split}"] = np.concatenate([p[1][key] for p in parts])
    return arrays, names


# ----- idx (MNIST) ------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An idx ubyte file (gzip-compressed or not) as a uint8 array of the header's shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path} is truncated or not a valid gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an idx ubyte file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (incomplete idx header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated or malformed: header says {dims} ({expected} bytes), found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def parse_idx(paths: dict[str, Path], num_classes: int) -> dict[str, np.ndarray]:
    """paths: official .gz name -> the file found (.gz or raw). Images become (N, 28, 28, 1)."""
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path, labels_path = paths[f"{prefix}-images-idx3-ubyte.gz"], paths[f"{prefix}-labels-idx1-ubyte.gz"]
        x, y = read_idx(images_path), read_idx(labels_path)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{images_path} / {labels_path}: shapes {x.shape} and {y.shape} do not pair up")
        _check_labels(y, num_classes, str(labels_path))
        arrays[f"x_{split}"] = x[..., None]
        arrays[f"y_labels_{split}"] = y.astype(np.int64)
    return arrays


def as_labels(values: object, where: str) -> np.ndarray:
    """Class indices as int64, checked before the cast: integers in [0, MAX_CLASSES) only, so
    uint64 values past 2**63 (which int64 wraps to negatives) or huge labels never get through."""
    try:
        y = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as e:
        raise DataError(f"{where} must be integer class indices ({e})") from None
    if y.dtype == object:  # a list holding ints past 64 bits, or mixed types
        raise DataError(f"{where} must be integer class indices, got Python objects (integers too large?)")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{where} must be integer class indices, got {y.dtype}")
    if y.size:
        lo, hi = int(y.min()), int(y.max())  # Python ints: exact for every integer dtype
        if lo < 0:
            raise DataError(f"{where} has negative labels (down to {lo})")
        if hi >= MAX_CLASSES:
            raise DataError(f"{where}: too many classes: labels go up to {hi:,}; cifarbench takes at most "
                            f"{MAX_CLASSES:,} classes (labels 0..{MAX_CLASSES - 1})")
    return y.astype(np.int64)


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in [0, {num_classes}), found [{y.min()}, {y.max()}]")


# ----- npz --------------------------------------------------------------------------------------


def parse_npz(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """x_train/y_train/x_test/y_test as uint8 NHWC and int64, and the class names."""
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable .npz file ({e})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in found]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (has: {', '.join(sorted(found)) or 'nothing'})")
    arrays = {}
    for split in ("train", "test"):
        x = _npz_images(found[f"x_{split}"], f"{path}: x_{split}")
        y = _npz_labels(found[f"y_{split}"], len(x), f"{path}: y_{split}")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: train images {arrays['x_train'].shape[1:]} and test images {arrays['x_test'].shape[1:]} differ")
    top = int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1
    if "class_names" in found:
        names = [str(n) for n in np.asarray(found["class_names"]).reshape(-1)]
        if top > len(names):
            raise DataError(f"{path}: labels go up to {top - 1} but class_names has {len(names)} entries")
    else:
        names = [str(i) for i in range(top)]
    return arrays, names


def _npz_images(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where} must be uint8 pixels in 0..255, got {x.dtype} (convert with (x * 255).round().astype(np.uint8))")
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) grayscale
    elif x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # NCHW
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{where} must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, got {x.shape}")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{where}: images must be square, got {x.shape[1]}x{x.shape[2]}")
    return np.ascontiguousarray(x)


def _npz_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{where} must be 1-D integer class indices, got {y.dtype} {y.shape}")
    if len(y) != n:
        raise DataError(f"{where} has {len(y)} labels for {n} images")
    return as_labels(y, where)
