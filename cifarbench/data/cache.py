"""Parsed arrays cached as .npy next to the official files, for fast reloads.

The cache lives in ``<folder>/.cifarbench-cache/<key>/`` and is valid while every source
file keeps its size and mtime (and the cache format version matches). The checksum warnings
found when the cache was built are stored with it, so a cached load warns exactly like a
fresh one without re-hashing. A folder that is read-only (a shared copy) simply goes
uncached.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_VERSION = 1
CACHE_DIR = ".cifarbench-cache"


def signature(files: list[Path]) -> dict[str, list[int]]:
    """What must not change for the cache to stay valid: each source file's size and mtime."""
    sig = {}
    for f in files:
        st = f.stat()
        sig[f.name] = [st.st_size, st.st_mtime_ns]
    return sig


def load(folder: Path, key: str, sig: dict) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, extra metadata) when a valid cache exists, else None."""
    where = folder / CACHE_DIR / key
    try:
        meta = json.loads((where / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("signature") != sig:
            return None
        arrays = {name: np.load(where / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged cache: parse again
    return arrays, meta.get("extra", {})


def save(folder: Path, key: str, sig: dict, arrays: dict[str, np.ndarray], extra: dict) -> bool:
    """Write the cache atomically; False (and no error) when the folder is not writable."""
    where = folder / CACHE_DIR / key
    if not writable(folder):
        return False
    try:
        where.mkdir(parents=True, exist_ok=True)
        (where / "meta.json").unlink(missing_ok=True)  # invalidate first: arrays and meta change together
        for name, arr in arrays.items():
            _atomic(where / f"{name}.npy", lambda f, a=arr: np.save(f, a, allow_pickle=False))
        meta = {"version": CACHE_VERSION, "signature": sig, "arrays": sorted(arrays), "extra": extra}
        _atomic(where / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    except OSError:
        return False
    return True


def writable(folder: Path) -> bool:
    """Writable by access rights *and* mode bits: root ignores a read-only mode, but a folder
    marked read-only (a shared data copy) is meant to stay untouched."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data dir must stay readable
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
