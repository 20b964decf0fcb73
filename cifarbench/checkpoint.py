"""Portable checkpoints: safetensors weights in canonical layout + a JSON sidecar, committed as one unit.

``model.safetensors`` holds canonical parameter and buffer names in PyTorch layout, with
metadata (model, dataset, classes, ...) so ``cifarbench test`` needs no guessing.
``optimizer.safetensors`` holds the optimizer state in the same canonical form, and
``checkpoint.json`` the position (epoch, global step), everything resume needs, and a manifest:
each file's size and sha256.

A run directory keeps its checkpoints as generations, ``checkpoints/<seq>-epoch<E>[-step<S>]/``.
A generation is written into a hidden staging folder, its ``checkpoint.json`` last, and then
renamed into place: that rename is the commit, so a kill at any point leaves the previous
generation whole (SQLite's rule: all of a commit or none). The newest generation's files are
then hard-linked to the top of the run directory (``run/model.safetensors`` ...) for people and
tools that look there; ``best`` is a symlink to the generation with the best validation accuracy.
Loading a run directory verifies the manifest and falls back to the newest complete generation,
saying so. Run directories written before generations existed (top-level files only, no
manifest) still load, unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench import atomic
from cifarbench.errors import CheckpointError

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
SIDECAR = "checkpoint.json"
GENERATIONS = "checkpoints"
BEST = "best"
FORMAT_VERSION = 1
_STAGING, _TRASH = ".new-", ".old-"
_GEN_NAME = re.compile(r"^(\d{6,})(?:-|$)")

# one writer for the whole package lives in cifarbench.atomic; these names stay for old callers
atomic_write_bytes, atomic_write_text, atomic_write_json = atomic.write_bytes, atomic.write_text, atomic.write_json


def save_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save

    # np.ascontiguousarray would turn 0-d arrays (e.g. "step") into 1-d ones.
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}
    atomic.write_bytes(path, save(arrays, metadata=metadata))


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
    """One checkpoint, loaded and verified."""

    run_dir: Path  # the folder its files are in (a generation, or the run directory of an old run)
    state: dict[str, np.ndarray]
    meta: dict[str, Any]  # model, dataset, num_classes, in_channels, image_size, class_names, mean, std, ...
    sidecar: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # e.g. an incomplete generation skipped

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def model_metadata(
    model: str, dataset: str, num_classes: int, in_channels: int, image_size: int,
    class_names: list[str], mean: tuple[float, ...], std: tuple[float, ...], backend: str,
    resize: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """``image_size`` is what the model takes; ``resize`` ([S, C], only when set) says the data were
    resized to S and centre-cropped to C = image_size on the device (``--image-size``)."""
    meta = {
        "format": "cifarbench", "format_version": FORMAT_VERSION, "model": model, "dataset": dataset,
        "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
        "class_names": list(class_names), "mean": list(mean), "std": list(std), "backend": backend,
    }
    if resize:
        meta["resize"] = [int(v) for v in resize]
    return meta


# ----- writing: one generation per commit ---------------------------------------------------


def save_checkpoint(
    run_dir: Path, state: dict[str, np.ndarray], meta: dict[str, Any],
    optimizer_state: dict[str, np.ndarray] | None = None, sidecar: dict[str, Any] | None = None,
    keep: int | None = None, best: bool = False,
) -> Path:
    """Commit one generation (weights, optimizer, then the manifest; the folder rename commits).

    Then publish it at the top of ``run_dir``, point ``best`` at it when asked, and keep only the
    newest ``keep`` generations (plus the best one). Returns the generation's folder.
    """
    run_dir = Path(run_dir)
    gens = run_dir / GENERATIONS
    gens.mkdir(parents=True, exist_ok=True)
    side = {**meta, **(sidecar or {})}
    seq = max((_seq(g) for g in list_generations(run_dir)), default=0) + 1
    name = f"{seq:06d}" + _position_name(side)
    stage = Path(tempfile.mkdtemp(dir=gens, prefix=_STAGING))
    try:
        st_meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
        save_tensors(stage / WEIGHTS, state, st_meta)
        atomic.kill_point("weights")
        if optimizer_state is not None:
            save_tensors(stage / OPTIMIZER, optimizer_state)
            atomic.kill_point("optimizer")
        files = {f.name: _digest(f) for f in (stage / WEIGHTS, stage / OPTIMIZER) if f.is_file()}
        atomic.write_json(stage / SIDECAR, {**side, "generation": name, "files": files})
        atomic.kill_point("manifest")
        os.chmod(stage, atomic.dir_mode())  # mkdtemp makes 0700
        os.replace(stage, gens / name)  # the commit
        atomic.fsync_dir(gens)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    atomic.kill_point("commit")
    _publish(run_dir, gens / name)
    if best:
        _replace_symlink(run_dir / BEST, f"{GENERATIONS}/{name}")
        atomic.kill_point("best")
    if keep:
        prune(run_dir, keep)
    return gens / name


def _position_name(side: dict[str, Any]) -> str:
    epoch, step = side.get("epoch"), side.get("step_in_epoch") or 0
    if not isinstance(epoch, int):
        return ""
    return f"-epoch{epoch:04d}" + (f"-step{step:06d}" if step else "")


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def _publish(run_dir: Path, gen: Path) -> None:
    """Hard-link the generation's files to the top of the run directory, the manifest last."""
    for name in (WEIGHTS, OPTIMIZER):
        if (gen / name).is_file():
            _link(gen / name, run_dir / name)
            atomic.kill_point(f"publish-{name.split('.')[0]}")
        else:
            (run_dir / name).unlink(missing_ok=True)
    _link(gen / SIDECAR, run_dir / SIDECAR)
    atomic.fsync_dir(run_dir)


def _link(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system: a copy does the same job
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _replace_symlink(path: Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    atomic.fsync_dir(path.parent)


def best_generation(run_dir: Path) -> str | None:
    """The name of the generation ``best`` points to, if any."""
    link = Path(run_dir) / BEST
    return Path(os.readlink(link)).name if link.is_symlink() else None


def prune(run_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` generations and the best one (renamed away first, so a
    kill mid-delete never leaves a half-deleted generation under a valid name)."""
    protected = {best_generation(run_dir)}
    removed = []
    for gen in list_generations(run_dir)[keep:]:
        if gen.name in protected:
            continue
        trash = gen.with_name(_TRASH + gen.name)
        os.replace(gen, trash)
        atomic.kill_point("prune")
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(gen.name)
    return removed


def clean_temp(run_dir: Path) -> list[str]:
    """Remove what a killed writer left: temp files and staging/trash folders."""
    run_dir = Path(run_dir)
    removed = atomic.clean_temp(run_dir)
    removed += [f"{GENERATIONS}/{n}" for n in atomic.clean_temp(run_dir / GENERATIONS, (_STAGING, _TRASH))]
    return removed


def has_checkpoint(run_dir: Path) -> bool:
    """A committed checkpoint is there (a staging folder left by a killed first save is not one)."""
    run_dir = Path(run_dir)
    return bool(list_generations(run_dir)) or any((run_dir / n).exists() for n in (WEIGHTS, SIDECAR))


def list_generations(run_dir: Path) -> list[Path]:
    """Committed generations, newest first."""
    gens = Path(run_dir) / GENERATIONS
    try:
        found = [p for p in gens.iterdir() if _GEN_NAME.match(p.name) and p.is_dir()]
    except OSError:
        return []
    return sorted(found, key=_seq, reverse=True)


def _seq(gen: Path) -> int:
    m = _GEN_NAME.match(gen.name)
    return int(m.group(1)) if m else 0


# ----- reading and verifying ----------------------------------------------------------------


def read_sidecar(path: Path) -> dict[str, Any]:
    """A checkpoint.json as a dict, or a one-line CheckpointError."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"corrupt {path}: a JSON {type(data).__name__}, not an object")
    return data


def verify(folder: Path) -> dict[str, Any]:
    """The folder's sidecar after checking every file its manifest lists (size, then sha256).

    A sidecar without a manifest (written before generations existed) is returned unchecked.
    """
    side = read_sidecar(Path(folder) / SIDECAR)
    files = side.get("files")
    if files is None:
        return side
    if not isinstance(files, dict):
        raise CheckpointError(f"corrupt {Path(folder) / SIDECAR}: 'files' is not an object")
    for name, want in files.items():
        path = Path(folder) / name
        if not path.is_file():
            raise CheckpointError(f"incomplete checkpoint {folder}: {name} is missing")
        got = _digest(path)
        if not isinstance(want, dict) or got["size"] != want.get("size"):
            raise CheckpointError(f"torn checkpoint {folder}: {name} has {got['size']} bytes, "
                                  f"{SIDECAR} says {want.get('size') if isinstance(want, dict) else want}")
        if got["sha256"] != want.get("sha256"):
            raise CheckpointError(f"torn checkpoint {folder}: {name} does not match the sha256 in {SIDECAR}")
    return side


def locate(path: str | Path) -> tuple[Path, Path, list[str]]:
    """A run directory, generation folder or .safetensors file -> (folder, weights file, notes).

    A run directory with generations gives its newest complete one; skipped ones are in notes.
    """
    p = Path(path)
    if p.is_dir():
        gens = list_generations(p)
        skipped = []
        for gen in gens:
            try:
                verify(gen)
            except CheckpointError as exc:
                skipped.append(exc.message)
                continue
            return gen, gen / WEIGHTS, [f"{m}; using the previous complete one, {gen.name}" for m in skipped]
        if skipped:
            raise CheckpointError(f"no complete checkpoint in {p}: {skipped[0]}")
        return p, p / WEIGHTS, []
    if p.suffix == ".safetensors":
        return p.parent, p, []
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}", hint="pass a run directory or its model.safetensors")
    raise CheckpointError(f"not a cifarbench checkpoint: {p}", hint="pass a run directory or a .safetensors file")


def resolve_weights(path: str | Path) -> tuple[Path, Path]:
    """A run directory or a .safetensors file -> (folder, weights file)."""
    folder, weights, _ = locate(path)
    return folder, weights


def _decode_meta(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    folder, weights, notes = locate(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint file not found: {weights}")
    sidecar: dict[str, Any] = {}
    if (folder / SIDECAR).is_file():
        try:
            sidecar = verify(folder)
        except CheckpointError as exc:
            hint = "pass the run directory: it loads the newest complete checkpoint" if (
                list_generations(folder.parent) or list_generations(folder)) else None
            raise CheckpointError(exc.message, hint=hint) from None
    state, raw_meta = load_tensors(weights)
    meta = _decode_meta(raw_meta)
    if meta.get("format") != "cifarbench" or "model" not in meta or "num_classes" not in meta:
        raise CheckpointError(
            f"{weights} has no cifarbench metadata (model, num_classes)",
            hint="convert foreign checkpoints with `cifarbench import`",
        )
    return Checkpoint(folder, {k: v.astype(np.float32, copy=False) for k, v in state.items()}, meta, sidecar, notes)


def load_optimizer_state(folder: Path) -> dict[str, np.ndarray] | None:
    path = Path(folder) / OPTIMIZER
    if not path.is_file():
        return None
    return load_tensors(path)[0]


def check_compatible(state: dict[str, np.ndarray], spec, source: str) -> None:
    """Refuse weights for another model or class count, naming the first difference."""
    from cifarbench.backends.base import check_state

    check_state(state, spec, source)
