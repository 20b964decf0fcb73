"""Portable checkpoints: safetensors weights in canonical layout + a JSON sidecar.

``model.safetensors`` holds canonical parameter and buffer names in PyTorch layout, with
metadata (model, dataset, classes, ...) so ``cifarbench test`` needs no guessing.
``optimizer.safetensors`` holds the optimizer state in the same canonical form, and
``checkpoint.json`` the position (epoch, global step) and everything resume needs. Every file
is written atomically (temp file + rename): an interrupted write never leaves a broken file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.errors import CheckpointError

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
SIDECAR = "checkpoint.json"
FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save

    # np.ascontiguousarray would turn 0-d arrays (e.g. "step") into 1-d ones.
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}
    atomic_write_bytes(path, save(arrays, metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt headers/data
        raise CheckpointError(f"corrupt checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
    return tensors, meta


@dataclass
class Checkpoint:
    """What a run directory holds, loaded."""

    run_dir: Path
    state: dict[str, np.ndarray]
    meta: dict[str, Any]  # model, dataset, num_classes, in_channels, image_size, class_names, mean, std, ...
    sidecar: dict[str, Any]

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def model_metadata(
    model: str, dataset: str, num_classes: int, in_channels: int, image_size: int,
    class_names: list[str], mean: tuple[float, ...], std: tuple[float, ...], backend: str,
) -> dict[str, Any]:
    return {
        "format": "cifarbench", "format_version": FORMAT_VERSION, "model": model, "dataset": dataset,
        "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
        "class_names": list(class_names), "mean": list(mean), "std": list(std), "backend": backend,
    }


def save_checkpoint(
    run_dir: Path, state: dict[str, np.ndarray], meta: dict[str, Any],
    optimizer_state: dict[str, np.ndarray] | None = None, sidecar: dict[str, Any] | None = None,
) -> None:
    """Weights first, then optimizer, then the sidecar: the sidecar names a complete pair."""
    run_dir = Path(run_dir)
    st_meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
    save_tensors(run_dir / WEIGHTS, state, st_meta)
    if optimizer_state is not None:
        save_tensors(run_dir / OPTIMIZER, optimizer_state)
    atomic_write_json(run_dir / SIDECAR, {**meta, **(sidecar or {})})


def _decode_meta(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def resolve_weights(path: str | Path) -> tuple[Path, Path]:
    """A run directory or a .safetensors file -> (run_dir, weights file)."""
    p = Path(path)
    if p.is_dir():
        return p, p / WEIGHTS
    if p.suffix == ".safetensors":
        return p.parent, p
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}", hint="pass a run directory or its model.safetensors")
    raise CheckpointError(f"not a cifarbench checkpoint: {p}", hint="pass a run directory or a .safetensors file")


def load_checkpoint(path: str | Path) -> Checkpoint:
    run_dir, weights = resolve_weights(path)
    state, raw_meta = load_tensors(weights)
    meta = _decode_meta(raw_meta)
    if meta.get("format") != "cifarbench" or "model" not in meta or "num_classes" not in meta:
        raise CheckpointError(
            f"{weights} has no cifarbench metadata (model, num_classes)",
            hint="convert foreign checkpoints with `cifarbench import`",
        )
    sidecar: dict[str, Any] = {}
    if (run_dir / SIDECAR).is_file():
        try:
            sidecar = json.loads((run_dir / SIDECAR).read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"corrupt {run_dir / SIDECAR}: {exc}") from None
    return Checkpoint(run_dir, {k: v.astype(np.float32, copy=False) for k, v in state.items()}, meta, sidecar)


def load_optimizer_state(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / OPTIMIZER
    if not path.is_file():
        return None
    return load_tensors(path)[0]


def check_compatible(state: dict[str, np.ndarray], spec, source: str) -> None:
    """Refuse weights for another model or class count, naming the first difference."""
    from cifarbench.backends.base import check_state

    check_state(state, spec, source)
