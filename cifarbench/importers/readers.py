"""Reading foreign checkpoint files without running code from them.

- ``.npz`` (MLX ``save_weights``): ``np.load(allow_pickle=False)``, never unpickles.
- ``.safetensors`` (MLX ``save_weights`` with that suffix): read with the ``safetensors``
  package into NumPy; the format holds only a JSON header and raw tensor bytes.
- ``.pth``/``.pt`` (torch ``state_dict``): ``torch.load(weights_only=True)``, torch's safe
  loader; a file that needs full unpickling is refused unless the user trusts it.
- ``.pkl`` (definfo): pickles can run arbitrary code, so they are refused unless trusted, and
  even then go through an unpickler that only builds NumPy arrays and plain containers
  (CuPy arrays become NumPy; the original's own classes become inert placeholders).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.errors import CheckpointError, UsageError

PICKLE_HINT = "pickles can run code when loaded; pass --trust-pickle only for files you trust"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except ValueError as exc:  # object arrays need pickle: not an MLX weights file
        raise CheckpointError(f"{path} holds pickled objects, not plain arrays: {exc}") from None
    except (OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {path} as .npz: {exc}") from None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {k: np.asarray(fh.get_tensor(k)) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for bad headers, dtypes and data
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot read {path} as .safetensors: {first}") from None


def _to_numpy_tree(obj: Any) -> Any:
    """torch tensors -> float32/int NumPy arrays, recursively through dicts."""
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {str(k): _to_numpy_tree(v) for k, v in obj.items()}
    return obj


def read_pth(path: Path, trust_pickle: bool) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise UsageError(f"reading {path.name} needs PyTorch", hint="pip install 'cifarbench[torch]'") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            first = str(exc).splitlines()[0][:160]
            raise CheckpointError(
                f"{path} needs full unpickling (not a plain state dict): {first}", hint=PICKLE_HINT
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read {path} as a torch file: {str(exc).splitlines()[0][:200]}") from None
    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # a whole pickled module (trusted only)
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return _to_numpy_tree(obj)


class _Placeholder:
    """Stands in for any class of the original project; keeps the state it is given, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _cupy_array(*args: Any, **kwargs: Any) -> np.ndarray:
    return np.asarray(args[0]) if args else np.asarray([])


_NUMPY_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy", "float32"), ("numpy", "float64"), ("numpy", "int64"),
    ("numpy", "int32"), ("numpy", "bool_"),
}
_BUILTINS_ALLOWED = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str", "bytes", "complex"}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_ALLOWED:
            return pickle.Unpickler.find_class(self, module, name)
        if module == "builtins" and name in _BUILTINS_ALLOWED:
            return pickle.Unpickler.find_class(self, module, name)
        if module.startswith("cupy"):
            # CuPy pickles arrays as a call that rebuilds from a NumPy array; keep the NumPy array.
            return np.ndarray if name == "ndarray" else _cupy_array
        if module.startswith(("numpy", "builtins", "os", "sys", "subprocess", "posix", "nt", "shutil", "importlib")):
            raise CheckpointError(f"refusing to load {module}.{name} from a pickle")
        return _Placeholder


def read_pkl(path: Path, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise CheckpointError(f"refusing to unpickle {path}", hint=PICKLE_HINT)
    try:
        return _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except CheckpointError:
        raise
    except Exception as exc:  # a corrupt pickle raises many types
        raise CheckpointError(f"cannot unpickle {path}: {type(exc).__name__}: {str(exc)[:200]}") from None


def read_any(path: Path, trust_pickle: bool) -> tuple[str, Any]:
    """(format, contents) where format is 'npz', 'safetensors', 'pth' or 'pkl'."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz", read_npz(path)
    if suffix == ".safetensors":
        return "safetensors", read_safetensors(path)
    if suffix in (".pth", ".pt"):
        return "pth", read_pth(path, trust_pickle)
    if suffix in (".pkl", ".pickle"):
        return "pkl", read_pkl(path, trust_pickle)
    raise UsageError(
        f"unknown checkpoint type '{suffix or path.name}'; "
        "expected .npz or .safetensors (MLX), .pth (PyTorch) or .pkl (definfo)"
    )
