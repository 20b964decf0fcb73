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


def fetch(file_name: str, md5: str | None, dest: Path, bases: Sequence[str], progress: ProgressFn | None = None,
          sha256_prefix: str | None = None, hint: str | None = None) -> Path:
    """Download ``file_name`` from the first base URL that serves it intact; write ``dest`` atomically.

    ``md5`` (the whole digest) and/or ``sha256_prefix`` (the leading hex digits of the sha256, as
    torchvision's weight files carry in their names) are checked before ``dest`` appears."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for base in bases:
        url = base + file_name
        for attempt in range(RETRIES):
            try:
                _download_once(url, file_name, md5, dest, progress, sha256_prefix)
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
        hint=hint or "check the network, set CIFARBENCH_MIRROR to a mirror, or put an existing copy under --data-dir",
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


def _download_once(url: str, file_name: str, md5: str | None, dest: Path, progress: ProgressFn | None,
                   sha256_prefix: str | None = None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "cifarbench"})
    try:
        # a failed check raises inside the block: the partial download is removed and dest is untouched
        with atomic.replacing(dest, suffix=".part") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest, sha256, done = _copy(resp, out, file_name, total, progress)
            if total is not None and done != total:
                raise _Transient(f"truncated transfer: {done} of {total} bytes")
            if md5 and digest != md5:
                raise _NextMirror(f"md5 {digest} differs from the expected {md5}")
            if sha256_prefix and not sha256.startswith(sha256_prefix.lower()):
                raise _NextMirror(f"sha256 {sha256[:16]}... does not start with the expected {sha256_prefix}")
            atomic.kill_point("download")  # the whole body is in the temp file, not yet in place
    except urllib.error.HTTPError as e:
        retry = e.code in (408, 429) or e.code >= 500
        raise (_Transient if retry else _NextMirror)(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        raise _Transient(str(getattr(e, "reason", None) or e) or type(e).__name__) from None


def _copy(resp, out, file_name: str, total: int | None, progress: ProgressFn | None) -> tuple[str, str, int]:
    h = hashlib.md5(usedforsecurity=False)
    h256 = hashlib.sha256()
    done = 0
    if progress:
        progress(file_name, 0, total)
    while chunk := resp.read(_CHUNK):
        out.write(chunk)
        h.update(chunk)
        h256.update(chunk)
        done += len(chunk)
        if progress:
            progress(file_name, done, total)
    return h.hexdigest(), h256.hexdigest(), done


# ----- extraction -----------------------------------------------------------------------------


MAX_NAME_BYTES = 1024  # a member path; the official archives' longest is under 40
MAX_PART_BYTES = 255  # one path component (NAME_MAX on Linux and macOS)


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive of plain files and folders into ``dest``, refusing anything else.

    The checks are complete on their own (they do not lean on tarfile's extraction filters,
    which changed in 2025 for CVE-2025-4517 and related): every member must be a regular file
    or a folder (symbolic links, hard links, devices and FIFOs are refused outright, so no
    link chain can redirect a later write), its path relative without '..', backslashes or NULs,
    no longer than 1024 bytes (255 per component), not given twice, and resolving inside the
    extraction folder. Files are then written by this module, one ``O_EXCL | O_NOFOLLOW`` open
    each, with the umask's default mode (the archive's modes, owners and times are ignored).
    Everything lands in a temporary folder inside ``dest`` first and is moved into place, so an
    interrupted extraction leaves no half-written official file.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            _check_members(members, archive)
            staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
            try:
                root = os.path.realpath(staging)
                for member in members:
                    _extract_member(tar, member, staging, root, archive)
                _merge_into(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"{archive} is truncated or not a valid tar archive ({e})", hint="delete it to download it again"
        ) from None


def _short(name: str) -> str:
    return name if len(name) <= 120 else name[:60] + "..." + name[-40:]


def _refuse(archive: Path, member: tarfile.TarInfo, why: str) -> DataError:
    return DataError(f"refusing {archive}: member '{_short(member.name)}' {why}")


def _check_members(members: list[tarfile.TarInfo], archive: Path) -> None:
    kinds: dict[str, bool] = {}  # normalised path -> is a folder
    for member in members:
        if member.issym():
            raise _refuse(archive, member, f"is a symbolic link (to '{_short(member.linkname)}'); data archives hold only files and folders")
        if member.islnk():
            raise _refuse(archive, member, f"is a hard link (to '{_short(member.linkname)}'); data archives hold only files and folders")
        if not (member.isfile() or member.isdir()):
            raise _refuse(archive, member, "is a special file (device, FIFO or other); data archives hold only files and folders")
        parts = _parts(member.name)
        if parts is None:
            raise _refuse(archive, member, "would be written outside the data folder")
        if len(member.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES or any(
                len(p.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES for p in parts):
            raise _refuse(archive, member, f"has a path longer than {MAX_NAME_BYTES} bytes or a part longer than {MAX_PART_BYTES}")
        key = "/".join(parts)
        for i in range(1, len(parts)):  # every parent must be (or become) a folder, never a file
            if kinds.get("/".join(parts[:i])) is False:
                raise _refuse(archive, member, f"lies under '{_short('/'.join(parts[:i]))}', which the archive makes a file")
        if key in kinds and not (kinds[key] and member.isdir()):
            raise _refuse(archive, member, "appears twice in the archive")
        kinds[key] = member.isdir()


def _parts(name: str) -> list[str] | None:
    """The path's components, or None when it is absolute, has '..', a drive, a backslash or a NUL."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
    if not parts or ".." in parts:
        return None
    return parts


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, root: str, archive: Path) -> None:
    path = staging.joinpath(*_parts(member.name))
    # nothing extracted is a link, so this holds by construction; checked anyway, as the last word
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise _refuse(archive, member, "would be written outside the data folder")
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - isfile() members always have data
        raise _refuse(archive, member, "has no data")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as out, src:
        shutil.copyfileobj(src, out, _CHUNK)


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
