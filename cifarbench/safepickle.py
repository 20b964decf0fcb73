"""The one restricted unpickler: it builds only what an allow-list names, so a pickle cannot run code.

A pickle names every callable it needs as (module, name) and the unpickler looks each one up
through ``find_class``; answering from an allow-list instead of importing is the standard way
to unpickle untrusted data (Python docs, "Restricting Globals"). Two lists are used:

- ``ARRAYS``: NumPy arrays and their dtypes, plus ``_codecs.encode`` (how Python 3 writes
  ``bytes`` in a protocol-2 pickle). The CIFAR "python version" batches need nothing else.
- ``CHECKPOINT``: ``ARRAYS`` plus plain containers and NumPy scalar types; CuPy arrays become
  NumPy arrays, and any other class (an original project's own model/optimizer classes) becomes
  an inert :class:`Placeholder` that keeps the state it is given and runs nothing. Names from
  modules that can reach the system (os, subprocess, builtins beyond the containers, ...) are
  refused outright with a message naming them.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import io
import pickle
from typing import Any, Callable, Mapping

import numpy as np

try:  # NumPy 2 moved the pickling helpers; old pickles name numpy.core, new ones numpy._core
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer

Allowed = Mapping[tuple[str, str], Any]

ARRAYS: Allowed = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5: an array from its raw buffer
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}

_CONTAINERS = (dict, list, tuple, set, frozenset, int, float, bool, str, bytes, complex)
CHECKPOINT: Allowed = {
    **ARRAYS,
    **{("builtins", t.__name__): t for t in _CONTAINERS},
    **{("numpy", t.__name__): t for t in (np.float32, np.float64, np.int64, np.int32, np.bool_)},
}

# Never stand in for these with a placeholder: a pickle naming them is an attack or not a checkpoint.
_REFUSED_PREFIXES = ("numpy", "builtins", "os", "sys", "subprocess", "posix", "nt", "shutil", "importlib", "_codecs")


class Placeholder:
    """Stands in for a class of the original project; keeps the state it is given, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _cupy_array(*args: Any, **kwargs: Any) -> np.ndarray:
    return np.asarray(args[0]) if args else np.asarray([])


def checkpoint_fallback(module: str, name: str) -> Any:
    """For ``CHECKPOINT``: CuPy arrays become NumPy, foreign classes placeholders, system names refused."""
    if module.startswith("cupy"):
        # CuPy pickles an array as a call that rebuilds it from a NumPy array; keep the NumPy array.
        return np.ndarray if name == "ndarray" else _cupy_array
    if module.split(".")[0] in _REFUSED_PREFIXES:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a pickle")
    return Placeholder


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` answers from ``allowed``; anything else goes to ``fallback`` or is refused."""

    def __init__(self, file: Any, allowed: Allowed, fallback: Callable[[str, str], Any] | None = None,
                 encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self._allowed = allowed
        self._fallback = fallback

    def find_class(self, module: str, name: str) -> Any:
        # protocol 0-2 pickles name Python 2 modules (__builtin__.set, copy_reg...): map them as pickle does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._allowed[(module, name)]
        except KeyError:
            pass
        if self._fallback is not None:
            return self._fallback(module, name)
        raise pickle.UnpicklingError(f"'{module}.{name}' is not allowed here")

    def persistent_load(self, pid: Any) -> Any:  # external references (torch storages...) are never resolved
        raise pickle.UnpicklingError("persistent references are not allowed here")


PICKLE_PROTOCOLS = range(2, 6)


def has_pickle_header(head: bytes) -> bool:
    """True when ``head`` opens a pickle of protocol 2..5 (PROTO opcode 0x80, then the version)."""
    return len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS


def loads(data: bytes, allowed: Allowed, fallback: Callable[[str, str], Any] | None = None,
          encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` through the allow-list; raises what ``pickle`` raises for a bad stream."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, fallback, encoding).load()


# Everything a malformed or refused stream raises from ``pickle.Unpickler.load``.
LOAD_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
               OverflowError, MemoryError, RecursionError, UnicodeDecodeError)
