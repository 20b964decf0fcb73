"""Every bad input of issue #13 gets one line, the README's exit code (2 usage, 1 runtime), and changes nothing.

One table: each case builds its input under a fresh folder, runs the CLI in-process
(``conftest.invoke``: no traceback, no escaping exception), and the checks are the same for
all: the exit code, exactly one line on stderr (the ``error:`` line; a case that fails after
training started may print progress lines before it, and nothing after), the expected words,
no "internal error", and every file that existed before is unchanged (content and mode) with
no new file with content when the run was refused up front.

Cases needing root powers (``chattr +i``, ``mount -t tmpfs``) skip with the reason when the
machine does not grant them; as root, permission bits do not stop writes, so these are the
ways to get a PermissionError, a read-only file system and a full disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import data_fixtures as fx
from conftest import invoke, write_npz

TRAIN = ["--epochs", "1", "--batch-size", "8", "--backend", "numpy", "--no-record"]


def _npz(path: Path, size: int = 32, **over) -> str:
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), y_train=np.arange(8) % 4,
                  x_test=rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8), y_test=np.arange(4) % 4)
    arrays.update(over)
    np.savez(path, **arrays)
    return f"npz:{path}"


class _Evil:
    """A pickle payload: unpickling it runs ``touch``; the marker file it would create is the proof."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_pth(path: Path) -> Path:
    """Shaped like torch.save's zip (archive/data.pkl), with a payload instead of a state dict."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil(path.parent / "PWNED")}, protocol=2))
        zf.writestr("archive/version", "3\n")
    return path


def _bad_label_in_batch_4(root: Path) -> Path:
    fx.write_cifar10(root, per_batch=8)
    batch = root / "cifar-10-batches-py" / "data_batch_4"
    entry = pickle.loads(batch.read_bytes(), encoding="bytes")
    entry[b"labels"][3] = 42
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    return root


def _symlink_tarball(root: Path) -> Path:
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return root


# ----- privileged set-ups: skip cleanly where the machine refuses them ---------------------------------


def _root_tool(*cmd: str) -> None:
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"`{' '.join(cmd)}` is not allowed here: {res.stderr.strip() or res.returncode}")


def _mount_tmpfs(folder: Path, options: str, cleanups: list) -> Path:
    folder.mkdir()
    _root_tool("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder))
    cleanups.append(lambda: subprocess.run(["umount", str(folder)], check=True))
    return folder


def _immutable(folder: Path, cleanups: list) -> Path:
    folder.mkdir()
    _root_tool("chattr", "+i", str(folder))
    cleanups.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
    return folder


# ----- the table -----------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    args: Callable[[Path, list], list[str]]  # (work folder, cleanups) -> CLI arguments
    code: int
    says: tuple[str, ...]
    never: tuple[str, ...] = ()
    up_front: bool = True  # refused before any work: nothing else on stderr, no new file
    marks: list = field(default_factory=list)


CASES = [
    Case("warmup-epochs-inf", lambda w, c: ["train", "cnn", "--dataset", "synthetic", *TRAIN, "--warmup-epochs", "inf",
                                             "-o", str(w / "run")], 2, ("--warmup-epochs", "finite number")),
    Case("lr-nan", lambda w, c: ["train", "cnn", "--dataset", "synthetic", *TRAIN, "--lr", "nan", "-o", str(w / "run")],
         2, ("--lr", "finite number")),
    Case("data-dir-is-a-file", lambda w, c: ["train", "cnn", "--dataset", "cifar10", "--data-dir", str(w / "a-file"),
                                              *TRAIN, "-o", str(w / "run")], 2, ("--data-dir", "a-file is a file, not a folder")),
    Case("data-dir-under-a-file", lambda w, c: ["data", "verify", "cifar10", "--data-dir", str(w / "a-file" / "sub")],
         2, ("--data-dir", "a-file is a file, not a folder")),
    Case("output-is-a-file", lambda w, c: ["train", "cnn", "--dataset", "synthetic", *TRAIN, "-o", str(w / "a-file")],
         2, ("-o", "a-file is a file, not a folder")),
    Case("output-under-a-file", lambda w, c: ["train", "cnn", "--dataset", "synthetic", *TRAIN,
                                               "-o", str(w / "a-file" / "run")], 2, ("a-file is a file, not a folder",)),
    Case("output-in-immutable-folder", lambda w, c: ["train", "cnn", "--dataset", "synthetic", *TRAIN,
                                                      "-o", str(_immutable(w / "frozen", c) / "run")],
         1, ("-o", "frozen", "permission denied")),
    Case("output-on-read-only-mount", lambda w, c: ["train", "cnn", "--dataset", "synthetic", *TRAIN,
                                                     "-o", str(_mount_tmpfs(w / "ro", "ro,size=1m", c) / "run")],
         1, ("-o", "read-only file system")),
    # lenet's weights are 250 KB: config.yaml fits in 64 KiB, model.safetensors does not
    Case("disk-full-during-save", lambda w, c: ["train", "lenet", "--dataset", f"npz:{write_npz(w / 'd.npz', 16, 8)}",
                                                 *TRAIN, "-o", str(_mount_tmpfs(w / "full", "size=64k", c) / "run")],
         1, ("no space left on the device writing", "full/run", "model.safetensors", "to write", "free"), up_front=False),
    Case("npz-labels-up-to-1e6", lambda w, c: ["train", "cnn", "--dataset", _npz(w / "big.npz", y_train=np.array(
        [0, 1, 2, 3, 0, 1, 2, 10**6])), *TRAIN, "-o", str(w / "run")], 1, ("y_train", "too many classes", "10,000")),
    Case("npz-uint64-labels-past-2**63", lambda w, c: ["train", "cnn", "--dataset", _npz(
        w / "u64.npz", y_train=np.array([0, 1, 2, 3, 0, 1, 2, 2**63 + 5], dtype=np.uint64)), *TRAIN, "-o", str(w / "run")],
         1, ("y_train", "too many classes", "9,223,372,036,854,775,813")),
    Case("npz-4x4-images-for-a-conv-net", lambda w, c: ["train", "cnn", "--dataset", _npz(w / "small.npz", size=4),
                                                         *TRAIN, "-o", str(w / "run")],
         2, ("model 'cnn' needs images of at least 8x8 pixels", "4x4")),
    Case("random-bytes-pth-trusted", lambda w, c: ["import", str(_write(w / "r.pth", np.random.default_rng(1).bytes(4096))),
                                                    "--from", "mike7seven", "--trust-pickle", "-o", str(w / "run")],
         1, ("r.pth is corrupt or not a PyTorch file",), ("--trust-pickle",)),
    Case("random-bytes-pth", lambda w, c: ["import", str(_write(w / "r.pth", np.random.default_rng(1).bytes(4096))),
                                            "--from", "mike7seven", "-o", str(w / "run")],
         1, ("r.pth is corrupt or not a PyTorch file",), ("--trust-pickle",)),
    Case("empty-pth-trusted", lambda w, c: ["import", str(_write(w / "e.pth", b"")), "--from", "mike7seven",
                                             "--trust-pickle", "-o", str(w / "run")],
         1, ("e.pth is corrupt or not a PyTorch file", "empty"), ("--trust-pickle",)),
    Case("evil-pth-from-definfo-trusted", lambda w, c: ["import", str(_evil_pth(w / "evil.pth")), "--from", "definfo",
                                                         "--trust-pickle", "-o", str(w / "run")],
         2, ("definfo checkpoints are .pickle or .pkl files, got evil.pth",)),
    Case("pkl-from-mike7seven-trusted", lambda w, c: ["import", str(_write(w / "m.pkl", pickle.dumps({"a": 1}))),
                                                       "--from", "mike7seven", "--trust-pickle", "-o", str(w / "run")],
         2, ("mike7seven checkpoints are", "got m.pkl")),
    Case("random-bytes-pkl-trusted", lambda w, c: ["import", str(_write(w / "r.pkl", b"\x00\x01garbage")),
                                                    "--from", "definfo", "--trust-pickle", "-o", str(w / "run")],
         1, ("r.pkl is corrupt or not a pickle file",)),
    Case("bad-label-in-data_batch_4", lambda w, c: ["train", "cnn", "--dataset", "cifar10", "--data-dir",
                                                     str(_bad_label_in_batch_4(w / "c10")), *TRAIN, "-o", str(w / "run")],
         1, ("data_batch_4: labels must lie in [0, 10), found [", ", 42]"), ("data_batch_1",)),
    Case("tarball-with-a-symlink", lambda w, c: ["train", "cnn", "--dataset", "cifar10", "--data-dir",
                                                  str(_symlink_tarball(w / "c10t")), *TRAIN, "-o", str(w / "run")],
         1, ("refusing", "cifar-10-python.tar.gz", "symbolic link")),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


_EMPTY = hashlib.sha256(b"").hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: (sha256 of its bytes, mode)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "folder"
        out[str(p.relative_to(folder))] = (digest, st.st_mode)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_and_changes_nothing(case: Case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_text("not a folder\n")
    cleanups: list = []
    try:
        args = case.args(work, cleanups)
        before = _snapshot(work)
        res = invoke(args)
        after = _snapshot(work)
    finally:
        for undo in reversed(cleanups):
            undo()
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == case.code, res.output
    assert lines and lines[-1].startswith("error: "), res.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, res.stderr
    if case.up_front:
        assert len(lines) == 1, res.stderr  # refused before any work: that line alone
    message = lines[-1]
    for words in case.says:
        assert words in message, message
    for words in case.never:
        assert words not in res.output, res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed changed
    if case.up_front:  # and no data was written (an empty lock file of the run folder may be left)
        assert [k for k, (digest, _) in after.items() if k not in before and digest not in ("folder", _EMPTY)] == []
    assert not (work / "PWNED").exists()  # no pickle payload ran
