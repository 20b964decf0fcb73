"""``mnist-mini``: a small real MNIST subset shipped inside the package, for offline runs in seconds.

2,000 training and 500 test images of the official MNIST release (Yann LeCun, Corinna Cortes and
Christopher J.C. Burges; CC BY-SA 3.0), chosen class-balanced with a fixed seed: per class, the first
200 (train) and 50 (test) of a seeded random permutation of that class's images, kept in the official
order. ``idx_train``/``idx_test`` give each image's index in the official files.

``scripts/make_mnist_subset.py`` writes the file from the four official ``.gz`` files (md5-checked).
The file is an *uncompressed* ``.npz`` with fixed zip headers, so its bytes depend on the inputs
only (no timestamps, no zlib version): anyone can regenerate it and compare :data:`SHA256`. Wheels
and git compress it anyway. Loading checks the SHA-256 first, so a damaged or altered copy is refused.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from cifarbench.data.dataset import Dataset
from cifarbench.errors import DataError

NAME = "mnist-mini"
PATH = Path(__file__).resolve().parent / "mnist-mini.npz"
SHA256 = "b71c2e2284a84eccec341460d36c8896bed31be00394ec96ef71a272b08e5ea4"
MD5 = "cc7d8f635266f72142ecd7f8f6f68f61"  # the same file, for `cifarbench data verify` (an md5 table)
SEED = 20  # the issue that introduced it; any fixed value would do
PER_CLASS = {"train": 200, "test": 50}
CLASS_NAMES = tuple(str(i) for i in range(10))
ATTRIBUTION = "MNIST (Y. LeCun, C. Cortes, C.J.C. Burges), CC BY-SA 3.0; subset made by scripts/make_mnist_subset.py"
_KEYS = ("x_train", "y_train", "x_test", "y_test", "idx_train", "idx_test", "class_names")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip date: no build time in the file


def select(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` images of each class, drawn with ``seed`` (class-balanced)."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(len(CLASS_NAMES)):
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise DataError(f"class {c} has {len(members)} images, fewer than the {per_class} asked for")
        picks.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(picks))


def make_subset(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                seed: int = SEED) -> dict[str, np.ndarray]:
    """The arrays of the file, from the full official MNIST arrays ((N, 28, 28) or (N, 28, 28, 1))."""
    out: dict[str, np.ndarray] = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        idx = select(np.asarray(y), PER_CLASS[split], seed + (split == "test"))
        out[f"x_{split}"] = np.ascontiguousarray(x[idx].reshape(len(idx), 28, 28, 1), dtype=np.uint8)
        out[f"y_{split}"] = np.asarray(y)[idx].astype(np.uint8)
        out[f"idx_{split}"] = idx.astype(np.uint16)  # < 65,536 images per split
    out["class_names"] = np.array(CLASS_NAMES)
    return {k: out[k] for k in _KEYS}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz whose bytes depend only on the arrays (fixed member order and headers)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in _KEYS:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # unix, whatever the writer's OS
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def md5_file(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()


def load_embedded(path: Path = PATH, sha256: str = SHA256) -> Dataset:
    """The shipped subset as a Dataset, after checking the file's SHA-256."""
    if not path.is_file():
        raise DataError(f"the embedded {NAME} file is missing ({path})", hint="reinstall cifarbench")
    actual = sha256_file(path)
    if actual != sha256:
        raise DataError(
            f"the embedded {NAME} file {path} is damaged or altered (sha256 {actual}, expected {sha256})",
            hint="reinstall cifarbench, or regenerate it with scripts/make_mnist_subset.py",
        )
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return Dataset(
        name=NAME,
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        class_names=[str(n) for n in arrays["class_names"]],
        source=f"embedded ({path.name}; {ATTRIBUTION.split(';')[0]})",
    )
