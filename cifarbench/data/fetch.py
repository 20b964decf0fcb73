"""Downloads (urllib only), checksums and safe archive extraction.

Nothing here prints: progress goes to a callback ``progress(file_name, bytes_done, bytes_total)``
(total None when the server does not say).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from cifarbench import atomic
from cifarbench.errors import DataError

ProgressFn = Callable[[str, int, "int | None"], None]

MIRROR_ENV = "CIFARBENCH_MIRROR"
RETRIES = 3  # attempts per mirror for transient failures
BACKOFF_S = 1.0  # first pause between attempts; doubles each time (tests set it to 0)
TIMEOUT_S = 60.0
_CHUNK = 1 << 16
_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python 3.11.4+


class DownloadError(DataError):
    """Every mirror failed for a file; callers that know the data set replace the hint with one that names its files."""


class _Transient(Exception):
    """Worth retrying on the same mirror (timeouts, resets, truncated bodies, 5xx)."""


class _NextMirror(Exception):
    """This mirror will not do (404, wrong checksum): try the next one."""


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # integrity check, not security
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mirror_bases(defaults: Sequence[str], override: Sequence[str] | str | None = None) -> list[str]:
    """Base URLs to try: the parameter, else $CIFARBENCH_MIRROR (comma-separated), else the official ones.

    An override replaces the official list rather than extending it, so a test server (or a
    private mirror) is never silently bypassed for the internet.
    """
    chosen = override if override else os.environ.get(MIRROR_ENV, "")
    if isinstance(chosen, str):
        chosen = [part.strip() for part in chosen.split(",") if part.strip()]
    bases = list(chosen) or list(defaults)
    return [b if b.endswith("/") else b + "/" for b in bases]


def fetch(file_name: str, md5: str | None, dest: Path, bases: Sequence[str], progress: ProgressFn | None = None) -> Path:
    """Download ``file_name`` from the first base URL that serves it intact; write ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for base in bases:
        url = base + file_name
        for attempt in range(RETRIES):
            try:
                _download_once(url, file_name, md5, dest, progress)
                return dest
            except _NextMirror as e:
                failures.append(f"{url}: {e}")
                break
            except _Transient as e:
                failures.append(f"{url}: {e}")
                if attempt + 1 < RETRIES:
                    time.sleep(BACKOFF_S * 2**attempt)
    raise DownloadError(
        f"could not download {file_name} into {dest.parent} ({_summarise(failures)})",
        hint="check the network, set CIFARBENCH_MIRROR to a mirror, or put an existing copy under --data-dir",
    )


def _summarise(failures: list[str]) -> str:
    """Repeated identical failures (retries) once, with a count; the last few mirrors only."""
    runs: list[list] = []
    for f in failures:
        if runs and runs[-1][0] == f:
            runs[-1][1] += 1
        else:
            runs.append([f, 1])
    return "; ".join(f if n == 1 else f"{f} ({n} attempts)" for f, n in runs[-4:])


def _download_once(url: str, file_name: str, md5: str | None, dest: Path, progress: ProgressFn | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "cifarbench"})
    try:
        # a failed check raises inside the block: the partial download is removed and dest is untouched
        with atomic.replacing(dest, suffix=".part") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest, done = _copy(resp, out, file_name, total, progress)
            if total is not None and done != total:
                raise _Transient(f"truncated transfer: {done} of {total} bytes")
            if md5 and digest != md5:
                raise _NextMirror(f"md5 {digest} differs from the expected {md5}")
    except urllib.error.HTTPError as e:
        retry = e.code in (408, 429) or e.code >= 500
        raise (_Transient if retry else _NextMirror)(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        raise _Transient(str(getattr(e, "reason", None) or e) or type(e).__name__) from None


def _copy(resp, out, file_name: str, total: int | None, progress: ProgressFn | None) -> tuple[str, int]:
    h = hashlib.md5(usedforsecurity=False)
    done = 0
    if progress:
        progress(file_name, 0, total)
    while chunk := resp.read(_CHUNK):
        out.write(chunk)
        h.update(chunk)
        done += len(chunk)
        if progress:
            progress(file_name, done, total)
    return h.hexdigest(), done


# ----- extraction -----------------------------------------------------------------------------


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest``, refusing members that would land outside it.

    Every member is checked by hand first (clear error naming the member), then extraction
    uses tarfile's "data" filter where Python has it (3.11.4+), which also drops unsafe modes.
    Files are unpacked into a temporary folder inside ``dest`` and moved into place, so an
    interrupted extraction leaves no half-written official file.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were checked above
                    tar.extractall(staging, members=members)
                _merge_into(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except _FILTER_ERROR as e:  # the data filter caught something the member check did not
        raise DataError(f"refusing {archive}: {e}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"{archive} is truncated or not a valid tar archive ({e})", hint="delete it to download it again"
        ) from None


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    if not _inside(member.name):
        raise DataError(f"refusing {archive}: member '{member.name}' would be written outside the data folder")
    if member.issym():
        target = str(PurePosixPath(member.name).parent / member.linkname)
        if member.linkname.startswith("/") or not _inside(target):
            raise DataError(f"refusing {archive}: link '{member.name}' points outside the data folder")
    elif member.islnk():
        if not _inside(member.linkname):
            raise DataError(f"refusing {archive}: link '{member.name}' points outside the data folder")
    elif not (member.isfile() or member.isdir()):
        raise DataError(f"refusing {archive}: member '{member.name}' is a special file")


def _inside(name: str) -> bool:
    """True when a relative archive path stays inside the extraction root after '..' resolution."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return False
    depth = 0
    for part in PurePosixPath(name).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in (".", ""):
            depth += 1
    return True


def _merge_into(src: Path, dest: Path) -> None:
    """Move src's tree into dest, replacing files of the same name and keeping the others."""
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge_into(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
