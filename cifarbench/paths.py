"""Folders given on the command line, checked before any work starts; OS errors told in one line.

``need_folder`` and ``need_writable_folder`` turn "-o is a file", "--data-dir lies under a
file" and "the run folder cannot be written" into usage/runtime errors up front, instead of an
``OSError`` after minutes of training. ``describe_os_error`` is what the CLI prints for an
``OSError`` that still escapes (a disk that fills during a save, a folder made read-only
mid-run): one line naming the file, and for a full disk how much was being written and how
much is free. As root, permission bits do not stop writes, so only immutable files
(``chattr +i``), read-only mounts and the like are ever seen here when running as root.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from cifarbench.errors import CifarbenchError, UsageError


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def need_folder(path: str | Path, flag: str) -> Path:
    """``path`` is a folder, or can become one: neither it nor its nearest existing parent is a file."""
    path = Path(path).expanduser()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        if existing == path:
            raise UsageError(f"{flag} {path} is a file, not a folder")
        raise UsageError(f"{flag} {path}: {existing} is a file, not a folder")
    return existing


def need_writable_folder(path: str | Path, flag: str) -> None:
    """``need_folder``, and a folder can be created where ``path`` is (or in it): tried, then removed."""
    existing = need_folder(path, flag)
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".cifarbench-probe-"))
    except OSError as exc:
        exc.filename = exc.filename or str(existing)
        raise CifarbenchError(f"{flag} {Path(path).expanduser()}: {describe_os_error(exc)}") from None


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def _written_at(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """(file, bytes) a cifarbench writer was writing when the error rose: its ``path`` and ``data`` locals.

    Errors from ``write()``/``fsync()`` carry no file name; the innermost cifarbench frame with
    a ``path`` names the file (a temp file's target, not the temp name), and a ``data`` bytes
    local on the way out tells the size."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    file = size = None
    for frame in reversed(frames):
        if not frame.f_globals.get("__name__", "").startswith("cifarbench"):
            continue
        local = frame.f_locals
        if file is None and isinstance(local.get("path"), (str, Path)):
            file = str(local["path"])
        if size is None and isinstance(local.get("data"), (bytes, bytearray, memoryview)):
            size = len(local["data"])
        if file is not None and size is not None:
            break
    return file, size


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what happened, to which file."""
    found, size = _written_at(exc.__traceback__)
    file = exc.filename if exc.filename is not None else found
    name = str(file) if file is not None else "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = _nearest_existing(Path(file).parent) if file is not None else None
        free = shutil.disk_usage(where).free if where is not None else None
        need = f"{_human(size)} to write" if size is not None else None
        room = f"{_human(free)} free on that file system" if free is not None else None
        detail = "; ".join(x for x in (need, room) if x)
        return f"no space left on the device writing {name}" + (f" ({detail})" if detail else "")
    if isinstance(exc, PermissionError):
        return f"{name}: permission denied (read-only, immutable or another user's file or folder)"
    if exc.errno == errno.EROFS:
        return f"{name}: read-only file system"
    if isinstance(exc, NotADirectoryError):
        return f"{name}: a part of this path is a file, not a folder"
    if isinstance(exc, FileExistsError):
        return f"{name} already exists" + (" (a file where a folder is needed)" if file and Path(file).is_file() else "")
    if isinstance(exc, IsADirectoryError):
        return f"{name} is a folder, not a file"
    if isinstance(exc, FileNotFoundError):
        return f"{name}: no such file or folder"
    return f"{name}: {exc.strerror or exc}"
