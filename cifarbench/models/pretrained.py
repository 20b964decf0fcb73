"""torchvision's published ImageNet weights for the ``resnet*-imagenet`` models (``--pretrained``).

What menzHSE's ``--finetune resnet18|34|50`` loaded (``IMAGENET1K_V1``), fetched without
torchvision: the file is downloaded once by ``data.fetch`` (progress, retries, atomic write, so a
failed or killed download never leaves a file under the real name), its sha256 checked against
the 8 hex digits torchvision puts in the file name, and kept under the user cache dir
(``$CIFARBENCH_CACHE/weights``). It is read with ``torch.load(weights_only=True)`` (tensors only,
no pickled code) when torch is installed; that first read also writes a ``.safetensors`` copy
beside it, which later runs without torch (MLX, NumPy, JAX on their own) read instead.

torchvision's state-dict keys are our canonical names (``conv1.weight``, ``layer1.0.downsample.0
.weight``, ``fc.bias``; see models/zoo/resnet.py), so the map is the identity plus dropping
``num_batches_tracked``; ``NAME_MAP`` is where a renamed tensor would go. The 1000-class ``fc``
is replaced by a freshly initialised head for the data set's classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from cifarbench import atomic
from cifarbench.errors import CheckpointError, DataError, UsageError
from cifarbench.models.spec import NOT_CANONICAL_SUFFIXES, Linear, ModelSpec

BASE_URL = "https://download.pytorch.org/models/"
MIRROR_ENV = "CIFARBENCH_WEIGHTS_MIRROR"  # base URL(s) replacing download.pytorch.org (comma-separated)
# model -> torchvision's IMAGENET1K_V1 file; the 8 hex digits are the start of its sha256
WEIGHT_FILES: dict[str, str] = {
    "resnet18-imagenet": "resnet18-f37072fd.pth",
    "resnet34-imagenet": "resnet34-b627a593.pth",
    "resnet50-imagenet": "resnet50-0676ba61.pth",
}
NAME_MAP: dict[str, str] = {}  # torchvision key -> canonical name, where they differ (none for ResNets)
HEAD = "fc"  # torchvision's classifier, replaced for the data set's classes


def weights_dir() -> Path:
    from cifarbench.data.cache import cache_root

    return cache_root() / "weights"


def weight_file(model: str) -> str:
    if model not in WEIGHT_FILES:
        raise UsageError(f"no pretrained weights for model '{model}'; --pretrained knows: {', '.join(WEIGHT_FILES)}")
    return WEIGHT_FILES[model]


def sha256_prefix(file_name: str) -> str:
    """``resnet18-f37072fd.pth`` -> ``f37072fd`` (torchvision's naming rule)."""
    return file_name.rsplit(".", 1)[0].rsplit("-", 1)[1]


def download(model: str, progress: Callable | None = None) -> Path:
    """The verified weight file of ``model`` in the cache, downloaded when absent."""
    from cifarbench.data import fetch

    name = weight_file(model)
    folder = weights_dir()
    dest = folder / name
    if dest.is_file():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    atomic.clean_temp(folder)  # what a killed download left behind
    bases = fetch.mirror_bases([BASE_URL], os.environ.get(MIRROR_ENV))
    return fetch.fetch(name, None, dest, bases, progress, sha256_prefix=sha256_prefix(name),
                       hint=f"check the network, or set ${MIRROR_ENV} to a folder URL serving {name}")


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def load_weights(model: str, progress: Callable | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """(the file read, torchvision's tensors): the .pth with torch (downloaded when absent), else its
    safetensors copy; without torch and without a copy, a one-line error before any download."""
    path = weights_dir() / weight_file(model)
    copy = path.with_suffix(".safetensors")
    if _torch() is None:
        if not copy.is_file():
            raise UsageError(f"reading torchvision's {path.name} needs torch (pip install torch), or its "
                             f"safetensors copy {copy}, which any --pretrained run with torch writes")
        return copy, _read_safetensors(copy)
    path = download(model, progress)
    return path, read_weights(path)


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """torchvision's state dict as float32 NumPy arrays (``num_batches_tracked`` dropped), read with
    ``torch.load(weights_only=True)``; writes the safetensors copy beside it when there is none."""
    torch = _torch()
    copy = path.with_suffix(".safetensors")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: pickle, zip and torch errors alike
        raise CheckpointError(f"cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "delete it to download it again") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a state dict")
    state = {k: v.detach().to(torch.float32).numpy() for k, v in raw.items()
             if hasattr(v, "detach") and not k.endswith(NOT_CANONICAL_SUFFIXES)}
    if not copy.is_file():
        from safetensors.numpy import save

        try:
            atomic.write_bytes(copy, save({k: np.ascontiguousarray(v) for k, v in state.items()}))
        except OSError:  # a read-only cache: the copy only spares torch-less runs a conversion
            pass
    return state


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return {k: np.asarray(v, np.float32) for k, v in load_file(str(path)).items()}
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} ({type(exc).__name__}); delete it to rebuild it") from None


def to_canonical(tv_state: dict[str, np.ndarray], spec: ModelSpec, fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision's ImageNet tensors under canonical names, the head taken from ``fresh`` (its init)."""
    expected = {**spec.param_shapes(), **spec.buffer_shapes()}
    state = {NAME_MAP.get(k, k): v for k, v in tv_state.items()}
    out: dict[str, np.ndarray] = {}
    for k, shape in expected.items():
        if k.startswith(HEAD + "."):
            out[k] = fresh[k]
            continue
        if k not in state:
            raise CheckpointError(f"pretrained weights for '{spec.name}' lack {k}")
        if tuple(state[k].shape) != tuple(shape):
            raise CheckpointError(f"pretrained {k} has shape {tuple(state[k].shape)}, model '{spec.name}' "
                                  f"needs {tuple(shape)} (ImageNet weights take 3-channel images)")
        out[k] = np.ascontiguousarray(state[k], np.float32)
    extra = sorted(k for k in state if k not in out and not k.startswith(HEAD + "."))
    if extra:
        raise CheckpointError(f"pretrained weights for '{spec.name}' have tensors it lacks: {extra[0]} "
                              f"({len(extra)} in all)")
    return out


def pretrained_state(spec: ModelSpec, seed: int, progress: Callable | None = None,
                     note: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Canonical weights for ``spec``: ImageNet's for every layer but the head, which is new."""
    from cifarbench.models.registry import init_params

    path, weights = load_weights(spec.name, progress)
    state = to_canonical(weights, spec, init_params(spec, seed))
    if note is not None:
        head = next(l for l in spec.param_layers() if isinstance(l, Linear) and l.name == HEAD)
        note(f"pretrained: {path.name} (torchvision ImageNet weights); new {head.fin}->{head.fout} "
             f"head '{HEAD}' for {spec.num_classes} classes (the 1000-class one is dropped)")
    return state
