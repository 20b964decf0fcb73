"""The one way cifarbench writes a file: a temp file beside it, fsync, rename, fsync the folder.

A reader (or a crash) sees the old file or the new one, never a mix. Files get the
conventional umask-respecting mode (0666 & ~umask, usually 0644), like ``open()`` would
give them: ``mkstemp`` alone makes 0600, which hid run directories from other users while
the data cache was readable. Temp names start with ``.`` and end with ``.tmp`` (``.part``
for downloads), so :func:`clean_temp` can sweep what a killed process left.

``kill_point`` is a fault-injection hook for the tests only: with
``CIFARBENCH_TEST_KILL_AT=<point>`` (or ``<point>@N`` for its N-th pass) the process
SIGKILLs itself there, as a power cut or ``kill -9`` would (``:TERM``/``:INT`` send another signal).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator

KILL_ENV = "CIFARBENCH_TEST_KILL_AT"
TEMP_SUFFIXES = (".tmp", ".part")
_umask_lock = threading.Lock()
_kill_counts: dict[str, int] = {}


def umask() -> int:
    """The process umask (it can only be read by setting it)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """What ``open()`` gives a new file: 0666 minus the umask (usually 0644)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """What ``mkdir`` gives a new folder: 0777 minus the umask (usually 0755)."""
    return 0o777 & ~umask()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` when the block ends cleanly; an error leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_with(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    with replacing(path) as fh:
        write(fh)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sweep_own_temp(path: Path) -> list[str]:
    """Remove the temp files a killed writer of ``path`` left beside it (``.<name>.*.tmp``), and only those."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
        removed.append(stale.name)
    return removed


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIXES)


def clean_temp(folder: Path, dir_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Remove temp files (and folders named ``<prefix>…``) left in ``folder`` by a killed writer."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            if dir_prefixes and p.name.startswith(dir_prefixes):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        elif is_temp(p.name):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def kill_point(name: str) -> None:
    """Tests only: ``$CIFARBENCH_TEST_KILL_AT=<point>[@N][:SIGNAL]`` sends this process SIGNAL
    (default KILL) on the N-th pass (default 1st) through write point ``name``."""
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    want, _, sig = want.partition(":")
    point, _, nth = want.partition("@")
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))
