"""Parsed arrays cached as .npy in cifarbench's own cache directory, for fast reloads.

A data folder is the user's: nothing is ever written beside their files, whatever its
permissions (root ignores mode bits, and a writable shared copy is still shared). The cache
lives in ``<cache root>/parsed/<digest of the folder's absolute path>/<key>/``, where the cache
root is ``$CIFARBENCH_CACHE``, else the user cache directory. It is valid while every source
file keeps its size and mtime (and the cache format version matches). The checksum warnings
found when the cache was built are stored with it, so a cached load warns exactly like a
fresh one without re-hashing. When the cache root cannot be written, loads simply go uncached.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cifarbench import atomic

CACHE_VERSION = 1
CACHE_ENV = "CIFARBENCH_CACHE"


def env_or_user_cache(env_var: str) -> Path:
    """The folder ``$env_var`` names, else the user cache directory (e.g. ~/.cache/cifarbench)."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cifarbench"))


def cache_root() -> Path:
    """$CIFARBENCH_CACHE, else the user cache directory."""
    return env_or_user_cache(CACHE_ENV)


def location(folder: Path, key: str) -> Path:
    """Where the parsed arrays of ``folder``'s data set ``key`` are cached (outside ``folder``)."""
    digest = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return cache_root() / "parsed" / digest / key


def signature(files: list[Path]) -> dict[str, list[int]]:
    """What must not change for the cache to stay valid: each source file's size and mtime."""
    sig = {}
    for f in files:
        st = f.stat()
        sig[f.name] = [st.st_size, st.st_mtime_ns]
    return sig


def load(folder: Path, key: str, sig: dict) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, extra metadata) when a valid cache exists, else None."""
    where = location(folder, key)
    try:
        meta = json.loads((where / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("signature") != sig:
            return None
        arrays = {name: np.load(where / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged cache: parse again
    return arrays, meta.get("extra", {})


def save(folder: Path, key: str, sig: dict, arrays: dict[str, np.ndarray], extra: dict) -> bool:
    """Write the cache atomically; False (and no error) when the cache root is not writable."""
    where = location(folder, key)
    try:
        where.mkdir(parents=True, exist_ok=True)
        (where / "meta.json").unlink(missing_ok=True)  # invalidate first: arrays and meta change together
        for name, arr in arrays.items():
            atomic.write_with(where / f"{name}.npy", lambda f, a=arr: np.save(f, a, allow_pickle=False))
        meta = {"version": CACHE_VERSION, "signature": sig, "arrays": sorted(arrays), "extra": extra,
                "source": str(Path(folder).resolve())}
        atomic.write_bytes(where / "meta.json", json.dumps(meta, indent=1).encode())
    except OSError:
        return False
    return True


def writable(folder: Path) -> bool:
    """Writable by access rights *and* mode bits: root ignores a read-only mode, but a folder
    marked read-only (a shared data copy) is meant to stay untouched by downloads."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False

