"""Finding, downloading, verifying and loading the official data sets under a data dir.

Order of business when a data set is asked for: an official layout already under the data dir
(no network), else an already downloaded archive (extract it), else download (if allowed).
A copy whose checksums differ from the official release is used with a warning; a file that
cannot be parsed is refused with a DataError naming it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from cifarbench.data import cache, formats
from cifarbench.data.dataset import Dataset
from cifarbench.data.fetch import MIRROR_ENV, DownloadError, ProgressFn, fetch, md5_file, mirror_bases, safe_extract
from cifarbench.data.sources import Source, canonical_name, file_candidates, placement, search_dirs, source_for
from cifarbench.errors import DataError, UsageError

DATA_ENV = "CIFARBENCH_DATA"


def default_data_dir() -> Path:
    """$CIFARBENCH_DATA, else the user cache dir (e.g. ~/.cache/cifarbench). --data-dir beats both."""
    return cache.env_or_user_cache(DATA_ENV)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    from cifarbench.paths import need_folder

    folder = Path(data_dir).expanduser() if data_dir else default_data_dir()
    need_folder(folder, "--data-dir" if data_dir else f"the data dir (${DATA_ENV} or the user cache dir)")
    return folder


@dataclass
class FileCheck:
    """One line of a verify report."""

    dataset: str
    path: str
    expected_md5: str | None
    actual_md5: str | None
    status: str  # "ok" | "mismatch" | "missing" | "unchecked" (no official checksum known)

    def to_dict(self) -> dict:
        return asdict(self)


# ----- locating ---------------------------------------------------------------------------------


def _find_one(source: Source, folder: Path, name: str, md5: str) -> tuple[Path, str | None] | None:
    for path, expected in file_candidates(source, folder, name, md5):
        if path.is_file():
            return path, expected
    return None


def find_files(source: Source, data_dir: Path) -> tuple[Path, dict[str, tuple[Path, str | None]]] | None:
    """The first folder holding every official file: (folder, name -> (path, expected md5))."""
    for folder in search_dirs(source, data_dir):
        found = {name: _find_one(source, folder, name, md5) for name, md5 in source.files}
        if all(found.values()):
            return folder, found  # type: ignore[return-value]
    return None


def _looked_in(source: Source, data_dir: Path) -> str:
    places = [str(d) for d in search_dirs(source, data_dir)]
    if source.kind == "cifar":
        places.append(str(data_dir / source.downloads[0][0]))
    return ", ".join(places)


def ensure_local(
    source: Source,
    data_dir: Path,
    download: bool,
    progress: ProgressFn | None = None,
    mirrors: Sequence[str] | str | None = None,
) -> tuple[Path, dict[str, tuple[Path, str | None]]]:
    hit = find_files(source, data_dir)
    if hit:
        return hit
    archive = data_dir / source.downloads[0][0]
    if source.kind == "cifar" and archive.is_file():
        safe_extract(archive, data_dir)  # downloaded earlier, never extracted: no network needed
    elif download:
        try:
            _download(source, data_dir, progress, mirrors, None)
        except DownloadError as e:
            raise DataError(
                f"{source.key} not found (looked in {_looked_in(source, data_dir)}) and the download failed: {e.message}",
                hint=offline_hint(source, data_dir),
            ) from None
    else:
        raise DataError(
            f"{source.key} not found (looked in {_looked_in(source, data_dir)}) and downloading is off",
            hint=f"run `cifarbench data download {source.key} --data-dir {data_dir}` "
            f"(fetches {source.urls(list(source.mirrors))[0]}), or {offline_hint(source, data_dir)}",
        )
    hit = find_files(source, data_dir)
    if not hit:
        missing = [n for n, m in source.files if not any(_find_one(source, d, n, m) for d in search_dirs(source, data_dir))]
        raise DataError(f"{source.key}: {', '.join(missing)} still missing under {data_dir} after extraction/download")
    return hit


def offline_hint(source: Source, data_dir: Path) -> str:
    """One line of what to do without the official hosts: place the files, use a mirror, or the embedded set."""
    from cifarbench.data.embedded import NAME as EMBEDDED_NAME

    return (
        f"put {placement(source, data_dir)} (or pass --data-dir DIR with that layout), "
        f"or set {MIRROR_ENV}=BASE_URL serving {source.downloads[0][0]}"
        f"{' etc.' if len(source.downloads) > 1 else ''}, "
        f"or train offline on the embedded set: --dataset {EMBEDDED_NAME}"
    )


# ----- downloading ------------------------------------------------------------------------------


def download_dataset(
    name: str,
    data_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    mirrors: Sequence[str] | str | None = None,
    expected_md5: dict[str, str] | None = None,
) -> Path:
    """Make the data set's official files present under the data dir; return their folder.

    Files already there are kept (no network). ``mirrors`` (or $CIFARBENCH_MIRROR) replaces the
    official base URLs; ``expected_md5`` overrides a download's checksum (a private mirror
    serving other bytes, or a test).
    """
    canon = canonical_name(name)
    found = source_for(canon)
    if found is None:
        raise UsageError(f"'{canon}' has nothing to download (it is embedded, generated or read from a local file)")
    source, _ = found
    root = resolve_data_dir(data_dir)
    hit = find_files(source, root)
    if hit:
        return hit[0]
    try:
        _download(source, root, progress, mirrors, expected_md5)
    except DownloadError as e:
        raise DownloadError(e.message, hint=offline_hint(source, root)) from None
    hit = find_files(source, root)
    if not hit:
        raise DataError(f"{source.key}: the download did not produce the official files under {root}")
    return hit[0]


def _download(source: Source, root: Path, progress, mirrors, expected_md5: dict[str, str] | None) -> None:
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is not None and not cache.writable(existing):
        raise DataError(f"cannot download into {root}: {existing} is read-only", hint="pass a writable --data-dir")
    bases = mirror_bases(source.mirrors, mirrors)
    md5s = {**dict(source.downloads), **(expected_md5 or {})}
    if source.kind == "cifar":
        archive = root / source.downloads[0][0]
        if not archive.is_file():
            fetch(archive.name, md5s[archive.name], archive, bases, progress)
        safe_extract(archive, root)
        return
    folder = root / source.folder
    for file_name, _ in source.downloads:
        if not _find_one(source, folder, file_name, ""):
            fetch(file_name, md5s[file_name], folder / file_name, bases, progress)


# ----- verifying --------------------------------------------------------------------------------


def _check(dataset: str, path: Path, expected: str | None) -> FileCheck:
    actual = md5_file(path)
    status = "unchecked" if expected is None else ("ok" if actual == expected else "mismatch")
    return FileCheck(dataset, str(path), expected, actual, status)


def verify_dataset(name: str, data_dir: str | Path | None = None) -> list[FileCheck]:
    """md5 of every official file (and of a downloaded archive, if present) against the release."""
    canon = canonical_name(name)
    if canon.startswith("npz:"):
        path = Path(canon[4:]).expanduser()
        if not path.is_file():
            return [FileCheck(canon, str(path), None, None, "missing")]
        return [_check(canon, path, None)]
    if canon == "mnist-mini":
        from cifarbench.data import embedded

        if not embedded.PATH.is_file():
            return [FileCheck(canon, str(embedded.PATH), embedded.MD5, None, "missing")]
        return [_check(canon, embedded.PATH, embedded.MD5)]
    found = source_for(canon)
    if found is None:
        return []  # generated data has no files
    source, _ = found
    root = resolve_data_dir(data_dir)
    hit = find_files(source, root)
    checks = []
    for file_name, md5 in source.files:
        if hit:
            where = hit[1][file_name]
        else:
            where = next((w for d in search_dirs(source, root) if (w := _find_one(source, d, file_name, md5))), None)
        if where is None:
            checks.append(FileCheck(canon, str(root / source.folder / file_name), md5, None, "missing"))
        else:
            checks.append(_check(canon, *where))
    archive = root / source.downloads[0][0]
    if source.kind == "cifar" and archive.is_file():
        checks.append(_check(canon, archive, source.downloads[0][1]))
    return checks


def _checksum_warning(key: str, folder: Path, found: dict[str, tuple[Path, str | None]]) -> list[str]:
    bad = []
    for path, expected in found.values():
        if expected is not None and md5_file(path) != expected:
            bad.append(path.name)
    if not bad:
        return []
    return [
        f"{key}: {len(bad)} of {len(found)} files in {folder} differ from the official release by md5 "
        f"({', '.join(bad)}); using them anyway, but results are not comparable with the original data set"
    ]


# ----- loading ----------------------------------------------------------------------------------


def load_official(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: ProgressFn | None = None,
    mirrors: Sequence[str] | str | None = None,
) -> Dataset:
    """A downloadable data set by canonical name, parsed once and cached as .npy."""
    source, variant = source_for(name)  # type: ignore[misc]
    folder, found = ensure_local(source, resolve_data_dir(data_dir), download, progress, mirrors)
    sig = cache.signature([p for p, _ in found.values()])
    cached = cache.load(folder, source.key, sig)
    if cached is not None:
        arrays, extra = cached
    else:
        warnings = _checksum_warning(source.key, folder, found)
        if source.kind == "cifar":
            arrays, names = formats.parse_cifar(source.key, folder)
        else:
            arrays = formats.parse_idx({n: p for n, (p, _) in found.items()}, len(source.class_names))
            names = {"labels": list(source.class_names)}
        extra = {"class_names": names, "warnings": warnings}
    dataset = Dataset(
        name=name,
        x_train=arrays["x_train"],
        y_train=arrays[f"y_{variant}_train"],
        x_test=arrays["x_test"],
        y_test=arrays[f"y_{variant}_test"],
        class_names=list(extra["class_names"][variant]),
        warnings=list(extra["warnings"]),
        source=str(folder),
    )
    if "moments" in extra:  # x_train's mean/std, shared by every label variant
        dataset._stats["moments"] = tuple(tuple(float(v) for v in m) for m in extra["moments"])
    if cached is None:
        extra["moments"] = [list(dataset.mean()), list(dataset.std())]
        cache.save(folder, source.key, sig, arrays, extra)
    return dataset
