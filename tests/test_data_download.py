"""Downloads against a loopback HTTP server: mirrors, md5, retries, truncation, safe extraction."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import data_fixtures as testing
from cifarbench.data import download_dataset, load_dataset, verify_dataset
from cifarbench.data import fetch as fetch_mod
from cifarbench.data.fetch import md5_file, safe_extract
from cifarbench.errors import DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``faults`` maps a file name to a list of faults consumed one per request."""

    faults: dict[str, list[str]] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.requests.append(name)
        pending = self.faults.get(name)
        fault = pending.pop(0) if pending else None
        if fault == "503":
            self.send_error(503, "busy")
        elif fault == "truncate":
            body = Path(self.directory, name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        else:
            super().do_GET()


@pytest.fixture()
def server(tmp_path):
    """(base URL, served folder, handler class) for a fresh loopback server."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("H", (_Handler,), {"faults": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(fetch_mod, "BACKOFF_S", 0.0)
    monkeypatch.setattr(fetch_mod, "TIMEOUT_S", 10.0)
    monkeypatch.delenv("CIFARBENCH_MIRROR", raising=False)


def _cifar10_tarball(work: Path, served: Path) -> tuple[Path, dict]:
    written = testing.write_cifar10(work, per_batch=20)
    archive = testing.tar_folder(work, "cifar-10-batches-py", served / "cifar-10-python.tar.gz")
    return archive, written


def _no_partial_files(folder: Path) -> bool:
    return not folder.exists() or not any(p.name.endswith(".part") for p in folder.rglob("*"))


def test_download_cifar10_extract_and_load(server, tmp_path):
    base, served, handler = server
    archive, written = _cifar10_tarball(tmp_path / "src", served)
    data = tmp_path / "data"
    events = []
    folder = download_dataset(
        "cifar10", data, progress=lambda *e: events.append(e), mirrors=[base],
        expected_md5={archive.name: md5_file(archive)},
    )
    assert folder == data / "cifar-10-batches-py" and (data / archive.name).is_file()
    size = archive.stat().st_size
    assert events[0] == (archive.name, 0, size) and events[-1] == (archive.name, size, size)
    assert [d for _, d, _ in events] == sorted(d for _, d, _ in events)
    ds = load_dataset("cifar10", data, download=False)
    np.testing.assert_array_equal(ds.x_train, written["x_train"])
    assert ds.warnings  # the members are not the official ones
    handler.requests.clear()
    assert download_dataset("cifar10", data, mirrors=[base]) == folder
    assert handler.requests == []  # present: no network


def test_download_md5_mismatch_is_refused(server, tmp_path, monkeypatch):
    base, served, handler = server
    _cifar10_tarball(tmp_path / "src", served)
    monkeypatch.setenv("CIFARBENCH_MIRROR", base)  # env override, official md5: the test file cannot match
    data = tmp_path / "data"
    with pytest.raises(DataError, match="md5 .* differs from the expected c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", data)
    assert not (data / "cifar-10-python.tar.gz").exists() and _no_partial_files(data)
    assert handler.requests == ["cifar-10-python.tar.gz"]  # a wrong checksum is not retried on one mirror


def test_retry_after_server_errors(server, tmp_path):
    base, served, handler = server
    archive, _ = _cifar10_tarball(tmp_path / "src", served)
    handler.faults[archive.name] = ["503", "truncate"]
    download_dataset("cifar10", tmp_path / "data", mirrors=[base], expected_md5={archive.name: md5_file(archive)})
    assert handler.requests == [archive.name] * 3
    assert md5_file(tmp_path / "data" / archive.name) == md5_file(archive)


def test_truncated_transfers_fail_after_retries(server, tmp_path):
    base, served, handler = server
    archive, _ = _cifar10_tarball(tmp_path / "src", served)
    handler.faults[archive.name] = ["truncate"] * fetch_mod.RETRIES
    data = tmp_path / "data"
    with pytest.raises(DataError) as err:
        download_dataset("cifar10", data, mirrors=[base], expected_md5={archive.name: md5_file(archive)})
    assert "truncated" in str(err.value) and base in str(err.value)
    assert len(handler.requests) == fetch_mod.RETRIES
    assert not (data / archive.name).exists() and _no_partial_files(data)


def test_next_mirror_after_404(server, tmp_path):
    base, served, handler = server
    archive, _ = _cifar10_tarball(tmp_path / "src", served)
    (served / "empty").mkdir()
    download_dataset(
        "cifar10", tmp_path / "data", mirrors=[base + "empty/", base], expected_md5={archive.name: md5_file(archive)}
    )
    assert handler.requests == [archive.name, archive.name]


def test_unreachable_mirror_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "RETRIES", 1)
    data = tmp_path / "data"
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data, mirrors=["http://127.0.0.1:9/"])  # discard port: connection refused
    text = str(err.value)
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in text
    assert str(data / "mnist") in text and "--data-dir" in text


def test_fashion_mnist_download_with_injected_checksums(server, tmp_path):
    base, served, _ = server
    written = testing.write_idx_set(served)
    md5s = {p.name: md5_file(p) for p in served.iterdir()}
    download_dataset("fashion-mnist", tmp_path, mirrors=base, expected_md5=md5s)
    ds = load_dataset("fashion-mnist", tmp_path, download=False)
    np.testing.assert_array_equal(ds.x_test, written["x_test"])
    assert "differ from the official release" in ds.warnings[0]
    assert {c.status for c in verify_dataset("fashion-mnist", tmp_path)} == {"mismatch"}


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST not present")
def test_real_mnist_download_end_to_end(server, tmp_path):
    base, served, _ = server
    for f in SHARED_MNIST.glob("*.gz"):
        shutil.copy(f, served / f.name)
    events = []
    folder = download_dataset("mnist", tmp_path, progress=lambda *e: events.append(e), mirrors=[base])
    assert folder == tmp_path / "mnist"
    assert {e[0] for e in events} == {p.name for p in SHARED_MNIST.glob("*.gz")}
    assert all(c.status == "ok" for c in verify_dataset("mnist", tmp_path))  # official md5s verified
    ds = load_dataset("mnist", tmp_path, download=False)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.warnings == []


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST not present")
def test_cli_download(server, tmp_path):
    import typer
    from typer.testing import CliRunner

    from cifarbench.cli import data_cmd

    base, served, _ = server
    for f in SHARED_MNIST.glob("*labels*.gz"):
        shutil.copy(f, served / f.name)
    for f in SHARED_MNIST.glob("*images*.gz"):  # images already present locally: not downloaded again
        (tmp_path / "mnist").mkdir(exist_ok=True)
        shutil.copy(f, tmp_path / "mnist" / f.name)
    app = typer.Typer()
    data_cmd.register(app)
    app.callback()(lambda: None)
    res = CliRunner().invoke(app, ["data", "download", "mnist", "--data-dir", str(tmp_path), "--mirror", base])
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "mnist") in res.stdout
    assert all(c.status == "ok" for c in verify_dataset("mnist", tmp_path))


# ----- archives ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "members,links,message",
    [
        ({"../evil.txt": b"x"}, None, "outside"),
        ({"cifar-10-batches-py/../../evil.txt": b"x"}, None, "outside"),
        ({"/tmp/evil.txt": b"x"}, None, "outside"),
        ({"ok.txt": b"x"}, {"cifar-10-batches-py/link": "../../etc/passwd"}, "symbolic link"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, members, links, message):
    archive = testing.tar_with_members(tmp_path / "bad.tar.gz", members, links)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match=message):
        safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not (dest / "ok.txt").exists()


def test_unsafe_tarball_in_data_dir_is_refused_on_load(tmp_path):
    testing.tar_with_members(tmp_path / "cifar-10-python.tar.gz", {"../evil.txt": b"x"})
    with pytest.raises(DataError, match="evil.txt"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_local_tarball_extracted_offline_and_truncated_refused(tmp_path):
    archive, written = _cifar10_tarball(tmp_path / "src", tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(archive, data / archive.name)
    ds = load_dataset("cifar10", data, download=False)  # no network: the archive is extracted
    np.testing.assert_array_equal(ds.x_test, written["x_test"])
    other = tmp_path / "other"
    other.mkdir()
    (other / archive.name).write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz is truncated"):
        load_dataset("cifar10", other, download=False)


def test_read_only_data_dir_is_not_downloaded_into(server, tmp_path):
    base, served, handler = server
    testing.write_idx_set(served)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DataError, match="read-only"):
            load_dataset("mnist", ro, mirrors=[base])
        assert handler.requests == [] and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ----- archives: the member checks alone (no reliance on tarfile's extraction filters) -----------------------


def _entries_tar(archive: Path, entries: list[tuple[str, bytes, str, bytes | None]]) -> Path:
    """(name, tar type, linkname, data) per member, in order, with no checks (the shapes attackers use)."""
    import io
    import tarfile

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return archive


def _cve_2025_4517_shape() -> list:
    """The published CVE-2025-4517 shape: 16 nested 247-character folder names, one-letter links to
    them (so realpath stops resolving past PATH_MAX), a link climbing out, and a hard link through it."""
    import os
    import tarfile

    comp, steps, path, out = "d" * 247, "abcdefghijklmnop", "", []
    for step in steps:
        out.append((os.path.join(path, comp), tarfile.DIRTYPE, "", None))
        out.append((os.path.join(path, step), tarfile.SYMTYPE, comp, None))
        path = os.path.join(path, comp)
    linkpath = os.path.join("/".join(steps), "l" * 254)
    out.append((linkpath, tarfile.SYMTYPE, "../" * len(steps), None))
    out.append(("escape", tarfile.SYMTYPE, linkpath + "/../" * 8 + "etc", None))
    out.append(("flaglink", tarfile.LNKTYPE, "escape/passwd", None))
    return out


def _bypass_cases():
    import tarfile

    S, L, R, D = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE, tarfile.DIRTYPE
    long_dirs = [e for e in _cve_2025_4517_shape() if e[1] == D]  # the same, links left out: the path alone
    return {
        "cve-2025-4517": (_cve_2025_4517_shape(), "symbolic link"),
        "cve-2025-4517-paths-only": (long_dirs + [(long_dirs[-1][0] + "/x", R, "", b"x")], "longer than 1024"),
        "symlink-chain": ([("d/a", S, "b", None), ("d/b", S, "c", None), ("d/c", S, "../..", None),
                           ("d/a/evil.txt", R, "", b"x")], "symbolic link"),
        "symlink-inside": ([("d/f", R, "", b"x"), ("d/g", S, "f", None)], "symbolic link"),
        "hardlink-outside": ([("x", L, "/etc/passwd", None)], "hard link"),
        "hardlink-inside": ([("a", R, "", b"x"), ("b", L, "a", None)], "hard link"),
        "char-device": ([("dev", tarfile.CHRTYPE, "", None)], "special file"),
        "block-device": ([("blk", tarfile.BLKTYPE, "", None)], "special file"),
        "fifo": ([("fifo", tarfile.FIFOTYPE, "", None)], "special file"),
        "long-component": ([("d/" + "x" * 256, R, "", b"x")], "part longer than 255"),
        "long-path": ([("/".join(["abcdefg"] * 130), R, "", b"x")], "longer than 1024"),
        "dot-dot-in-the-middle": ([("d/../../evil.txt", R, "", b"x")], "outside"),
        "dot-slash-dot-dot": ([("./../evil.txt", R, "", b"x")], "outside"),
        "backslash": ([("..\\evil.txt", R, "", b"x")], "outside"),
        "member-twice": ([("a", R, "", b"x"), ("a", R, "", b"y")], "twice"),
        "file-then-under-it": ([("a", R, "", b"x"), ("a/b", R, "", b"y")], "makes a file"),
    }


@pytest.mark.parametrize("name", list(_bypass_cases()))
def test_tar_bypass_shapes_are_refused_before_anything_is_written(tmp_path, name):
    entries, message = _bypass_cases()[name]
    archive = _entries_tar(tmp_path / "bad.tar", entries)
    dest = tmp_path / "data" / "inner"
    with pytest.raises(DataError, match=message) as info:
        safe_extract(archive, dest)
    assert "\n" not in str(info.value) and len(info.value.message) < 400  # one readable line, even for 4 kB names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "data"]
    assert list(dest.iterdir()) == []  # the checks ran before the first byte was extracted


def test_extracted_files_ignore_the_archive_modes_and_owners(tmp_path):
    import io
    import os
    import tarfile

    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        for name, mode in (("d/setuid", 0o4777), ("d/private", 0o600)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.uname = 3, mode, 4242, "nobody"
            tar.addfile(info, io.BytesIO(b"abc"))
    safe_extract(archive, tmp_path / "out")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("setuid", "private"):
        st = (tmp_path / "out" / "d" / name).stat()
        assert (tmp_path / "out" / "d" / name).read_bytes() == b"abc"
        assert st.st_mode & 0o7777 == 0o666 & ~umask and st.st_uid == os.getuid()


# ----- train's downloads: the same progress as `data download` ---------------------------------------
TRAIN = ["train", "lenet", "--dataset", "cifar10", "--backend", "numpy", "--fast-dev-run", "--no-record"]
# rich's DownloadColumn (done/total kB) and TransferSpeedColumn (a rate)
BAR = re.compile(r"cifar-10-python\.tar\.gz .*?(\d+\.\d+)/(\d+\.\d+) kB\s+\S+ [kKM]?B/s")


def _as_official(monkeypatch, base: str, archive: Path) -> None:
    """The test tarball stands in for the official one: its md5 becomes CIFAR-10's, the server its mirror."""
    from cifarbench.data import sources

    fake = dataclasses.replace(sources.CIFAR10, downloads=((archive.name, md5_file(archive)),))
    monkeypatch.setitem(sources.SOURCES, "cifar10", fake)
    monkeypatch.setenv("CIFARBENCH_MIRROR", base)


def test_train_downloads_show_the_data_download_bar_on_a_terminal(server, tmp_path, monkeypatch):
    from conftest import invoke
    from cifarbench.cli._console import err_console

    base, served, handler = server
    archive, _ = _cifar10_tarball(tmp_path / "src", served)
    _as_official(monkeypatch, base, archive)
    monkeypatch.setattr(err_console, "_force_terminal", True)
    res = invoke([*TRAIN, "--data-dir", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    size_kb = f"{archive.stat().st_size / 1000:.1f}"
    done = [m.groups() for m in BAR.finditer(res.output)]
    assert done and done[-1] == (size_kb, size_kb)  # bytes done / total and a rate, as `data download` shows
    alone = invoke(["data", "download", "cifar10", "--data-dir", str(tmp_path / "b")])
    assert alone.exit_code == 0 and [m.groups() for m in BAR.finditer(alone.output)][-1] == (size_kb, size_kb)
    assert handler.requests == [archive.name] * 2


def test_train_downloads_without_a_terminal_and_quiet(server, tmp_path, monkeypatch):
    from conftest import invoke

    base, served, _ = server
    archive, _ = _cifar10_tarball(tmp_path / "src", served)
    _as_official(monkeypatch, base, archive)
    res = invoke([*TRAIN, "--data-dir", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[:2] == [f"downloading {archive.name} ...",
                         f"downloaded {archive.name} ({archive.stat().st_size / 1e6:.1f} MB)"]
    quiet = invoke([*TRAIN, "--data-dir", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    out = [ln for ln in quiet.output.splitlines() if ln.strip()]
    assert all(ln.startswith("warning:") for ln in out[:-1])
    assert "downloading" not in quiet.output and "downloaded" not in quiet.output
    assert out[-1].startswith("test accuracy ")
