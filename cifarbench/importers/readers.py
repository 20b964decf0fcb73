"""Reading foreign checkpoint files without running code from them.

Every file is checked before any loader sees it: the extension must be one the ``--from``
project wrote (``importers.SOURCE_FORMATS``), and the first bytes must be that container's
magic (zip or torch's legacy pickle header for ``.pth``, zip for ``.npz``, a JSON header length
for ``.safetensors``, a protocol 2-5 pickle for ``.pkl``). So random bytes, an empty file or a
pickle renamed ``.pth`` are refused as "corrupt or not a ... file" and nothing is unpickled.

- ``.npz`` (MLX ``save_weights``): ``np.load(allow_pickle=False)``, never unpickles.
- ``.safetensors`` (MLX ``save_weights`` with that suffix): read with the ``safetensors``
  package into NumPy; the format holds only a JSON header and raw tensor bytes.
- ``.pth``/``.pt`` (torch ``state_dict``): ``torch.load(weights_only=True)``, torch's safe
  loader; a file that needs full unpickling is refused unless the user trusts it.
- ``.pkl`` (definfo): pickles can run arbitrary code, so they are refused unless trusted, and
  even then go through ``cifarbench.safepickle`` (NumPy arrays and plain containers only;
  CuPy arrays become NumPy; the original's own classes become inert placeholders).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench import safepickle
from cifarbench.errors import CheckpointError, UsageError

PICKLE_HINT = "pickles can run code when loaded; pass --trust-pickle only for files you trust"
# torch.save(..., _use_new_zipfile_serialization=False) opens with its magic number 0x1950a86a20f9469cfc6c,
# pickled: PROTO n, (protocol 4+: a FRAME header,) LONG1 of 10 bytes
_TORCH_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
FORMATS = {".npz": "npz", ".safetensors": "safetensors", ".pth": "pth", ".pt": "pth", ".pkl": "pkl", ".pickle": "pkl"}


def _is_torch_legacy(head: bytes) -> bool:
    if not safepickle.has_pickle_header(head):
        return False
    at = 11 if head[2:3] == b"\x95" else 2  # skip the 8-byte frame length of protocol 4/5
    return head[at:at + len(_TORCH_LEGACY_MAGIC)] == _TORCH_LEGACY_MAGIC


def _head(path: Path, n: int = 32) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _describe_head(head: bytes) -> str:
    return "the file is empty" if not head else f"it starts with bytes {head[:8].hex(' ')}"


def format_of(path: Path) -> str:
    """'npz', 'safetensors', 'pth' or 'pkl' from the extension; UsageError for any other."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"unknown checkpoint type '{path.suffix or path.name}'; "
            "expected .npz or .safetensors (MLX), .pth (PyTorch) or .pkl (definfo)"
        )
    return fmt


def check_container(path: Path, fmt: str) -> None:
    """Refuse a file whose first bytes are not ``fmt``'s container, before any loader reads it."""
    head = _head(path)
    if fmt == "pth":
        if _is_torch_legacy(head):
            return
        if head.startswith(_ZIP_MAGIC) and any(n == "data.pkl" or n.endswith("/data.pkl")
                                               for n in _zip_names(path, "PyTorch")):
            return
        raise CheckpointError(f"{path} is corrupt or not a PyTorch file (no torch zip archive or legacy header; "
                              f"{_describe_head(head)})")
    if fmt == "npz":
        if not head.startswith(_ZIP_MAGIC):
            raise CheckpointError(f"{path} is corrupt or not a .npz file (not a zip archive; {_describe_head(head)})")
        _zip_names(path, ".npz")
    elif fmt == "safetensors":
        size = path.stat().st_size
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
        if not (0 < n <= size - 8 and head[8:9] == b"{"):
            raise CheckpointError(f"{path} is corrupt or not a .safetensors file (no JSON header; {_describe_head(head)})")
    elif fmt == "pkl" and not safepickle.has_pickle_header(head):
        raise CheckpointError(f"{path} is corrupt or not a pickle file (no protocol 2-5 header; {_describe_head(head)})")


def _zip_names(path: Path, kind: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a {kind} file (a damaged zip archive: {exc})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except ValueError as exc:  # object arrays need pickle: not an MLX weights file
        raise CheckpointError(f"{path} holds pickled objects, not plain arrays: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
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


def _first_line(exc: BaseException, n: int = 200) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:n]


def read_pth(path: Path, trust_pickle: bool) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise UsageError(f"reading {path.name} needs PyTorch", hint="pip install 'cifarbench[torch]'") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(
                f"{path} needs full unpickling (not a plain state dict): {_first_line(exc, 160)}", hint=PICKLE_HINT
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # a damaged pickle inside a valid archive raises many types
            raise CheckpointError(f"{path} is corrupt: {type(exc2).__name__}: {_first_line(exc2)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a PyTorch file: {_first_line(exc)}") from None
    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # a whole pickled module (trusted only)
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return _to_numpy_tree(obj)


def read_pkl(path: Path, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise CheckpointError(f"refusing to unpickle {path}", hint=PICKLE_HINT)
    check_container(path, "pkl")
    data = path.read_bytes()
    try:
        return safepickle.loads(data, safepickle.CHECKPOINT, safepickle.checkpoint_fallback)
    except safepickle.LOAD_ERRORS as exc:  # a corrupt or refused pickle raises many types
        raise CheckpointError(f"cannot unpickle {path}: {type(exc).__name__}: {str(exc)[:200]}") from None


def read_any(path: Path, trust_pickle: bool, accepted: tuple[str, ...] | None = None,
             owner: str = "these") -> tuple[str, Any]:
    """(format, contents) where format is 'npz', 'safetensors', 'pth' or 'pkl'.

    ``accepted``: the formats the caller takes (the ``--from`` project's, named by ``owner``);
    any other is a usage error raised before the file is opened."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    fmt = format_of(path)
    if accepted is not None and fmt not in accepted:
        exts = sorted(e for e, f in FORMATS.items() if f in accepted)
        raise UsageError(f"{owner} checkpoints are {' or '.join(exts)} files, got {path.name}")
    check_container(path, fmt)
    readers = {"npz": read_npz, "safetensors": read_safetensors}
    if fmt in readers:
        return fmt, readers[fmt](path)
    return fmt, (read_pth if fmt == "pth" else read_pkl)(path, trust_pickle)
