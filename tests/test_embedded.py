"""The embedded mnist-mini subset, offline hints when a download fails, and `cifarbench data info|verify`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifarbench.data import embedded, load_dataset, verify_dataset
from cifarbench.data import fetch as fetch_mod
from cifarbench.data.formats import read_idx
from cifarbench.errors import DataError
from conftest import SHARED_DATA, invoke

ROOT = Path(__file__).resolve().parents[1]
# The official files: ../shared/data/mnist next to the checkout, or where $CIFARBENCH_SHARED_DATA points.
MNIST_DIR = Path(os.environ.get("CIFARBENCH_SHARED_DATA", SHARED_DATA)) / "mnist"


# ----- the shipped file -------------------------------------------------------------------------------------


def test_shipped_file_matches_its_checksums():
    assert embedded.sha256_file(embedded.PATH) == embedded.SHA256
    assert embedded.md5_file(embedded.PATH) == embedded.MD5


def test_mnist_mini_is_a_class_balanced_subset():
    ds = load_dataset("mnist-mini")
    assert ds.name == "mnist-mini" and ds.class_names == [str(i) for i in range(10)]
    assert ds.x_train.shape == (2000, 28, 28, 1) and ds.x_test.shape == (500, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train).tolist() == [200] * 10 and np.bincount(ds.y_test).tolist() == [50] * 10
    assert "CC BY-SA 3.0" in ds.source and ds.warnings == []
    with np.load(embedded.PATH) as npz:
        for split, n in (("train", 60000), ("test", 10000)):
            idx = npz[f"idx_{split}"].astype(np.int64)
            assert (np.diff(idx) > 0).all() and idx[-1] < n  # distinct, in the official order
    # real digits, not noise: MNIST's ink covers about 19 % of the pixels, the rest is exactly 0
    assert 0.15 < (ds.x_train > 0).mean() < 0.25 and abs(ds.mean()[0] - 0.1307) < 0.01


def test_writer_reproduces_the_shipped_bytes(tmp_path):
    # the bytes depend on the arrays only: rewriting the shipped arrays gives the shipped file back
    with np.load(embedded.PATH) as npz:
        arrays = {k: npz[k] for k in npz.files}
    out = tmp_path / "again.npz"
    embedded.write_npz(out, arrays)
    assert out.read_bytes() == embedded.PATH.read_bytes()


def test_select_is_seeded_and_class_balanced():
    y = np.random.default_rng(1).integers(0, 10, 5000)
    a, b, c = embedded.select(y, 30, seed=5), embedded.select(y, 30, seed=5), embedded.select(y, 30, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a]).tolist() == [30] * 10 and (np.diff(a) > 0).all()
    with pytest.raises(DataError, match="fewer than"):
        embedded.select(np.zeros(100, dtype=np.int64), 30, seed=0)


def test_damaged_or_missing_file_is_refused(tmp_path):
    bad = tmp_path / "mnist-mini.npz"
    data = bytearray(embedded.PATH.read_bytes())
    data[len(data) // 2] ^= 0x01  # one pixel bit: still a valid npz, but not the shipped file
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged or altered") as exc:
        embedded.load_embedded(bad)
    assert "make_mnist_subset.py" in exc.value.hint
    with pytest.raises(DataError, match="missing"):
        embedded.load_embedded(tmp_path / "nothing.npz")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="official MNIST files not present (../shared/data/mnist)")
def test_regenerated_from_the_official_files(tmp_path):
    out = tmp_path / "mnist-mini.npz"
    script = ROOT / "scripts" / "make_mnist_subset.py"
    res = subprocess.run([sys.executable, str(script), str(MNIST_DIR), "--output", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert embedded.sha256_file(out) == embedded.SHA256 and f"sha256 {embedded.SHA256}" in res.stdout
    # each image and label is the official one at its recorded index
    x_off, y_off = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz"), read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    with np.load(out) as npz:
        idx = npz["idx_test"].astype(np.int64)
        assert np.array_equal(npz["x_test"][..., 0], x_off[idx]) and np.array_equal(npz["y_test"], y_off[idx])


def test_script_refuses_files_that_are_not_official(tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"not mnist")
    script = ROOT / "scripts" / "make_mnist_subset.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path), "--output", str(tmp_path / "o.npz")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "not the official file" in res.stderr and not (tmp_path / "o.npz").exists()


# ----- no network, no dead end ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hint_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("hint:")]
    assert len(lines) == 1, output
    return lines[0]


def test_failed_download_says_what_to_do_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "BACKOFF_S", 0.0)
    env = {"CIFARBENCH_MIRROR": f"http://127.0.0.1:{_closed_port()}/", "COLUMNS": "100"}
    empty = tmp_path / "empty"
    res = invoke(["train", "lenet", "--dataset", "mnist", "--data-dir", str(empty), "--epochs", "1"], env=env)
    assert res.exit_code == 1
    hint = _hint_line(res.output)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in hint
    assert f"{empty / 'mnist'}/" in hint and "--data-dir" in hint
    assert "CIFARBENCH_MIRROR" in hint and "--dataset mnist-mini" in hint
    res = invoke(["data", "download", "cifar10", "--data-dir", str(empty)], env=env)
    assert res.exit_code == 1
    hint = _hint_line(res.output)
    assert f"cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) in {empty}/" in hint
    assert "CIFARBENCH_MIRROR" in hint and "--dataset mnist-mini" in hint


def test_download_off_names_the_files_too(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("fashion-mnist", tmp_path, download=False)
    assert "cifarbench data download fashion-mnist" in exc.value.hint
    assert f"t10k-labels-idx1-ubyte.gz in {tmp_path / 'fashion-mnist'}/" in exc.value.hint


# ----- data info / verify -----------------------------------------------------------------------------------


def test_data_info_lists_presence_needs_and_the_data_dir(tmp_path):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    rows = {r["name"]: r for r in json.loads(invoke(["data", "info", "--data-dir", str(tmp_path), "--json"]).stdout)}
    assert rows["mnist"]["present"] is False and rows["mnist"]["kind"] == "download"
    assert "mnist/{train-images-idx3-ubyte.gz," in rows["mnist"]["needs"] and rows["mnist"]["data_dir"] == str(tmp_path)
    assert rows["cifar10"]["needs"].startswith("cifar-10-python.tar.gz") and rows["cifar10"]["download_mb"] == 163
    assert rows["mnist-mini"]["present"] is True and rows["mnist-mini"]["kind"] == "embedded"
    assert rows["mnist-mini"]["train"] == 2000 and rows["synthetic"]["kind"] == "generated"
    if MNIST_DIR.is_dir():  # a present data set shows where it was found
        for f in MNIST_DIR.iterdir():
            shutil.copy(f, mnist / f.name)
        rows = {r["name"]: r for r in json.loads(invoke(["data", "info", "--data-dir", str(tmp_path), "--json"]).stdout)}
        assert rows["mnist"]["present"] is True and rows["mnist"]["source"] == str(mnist)
    text = invoke(["data", "info", "--data-dir", str(tmp_path)], env={"COLUMNS": "240"}).stdout
    assert f"data dir: {tmp_path} (from --data-dir" in text and "embedded" in text and "missing" in text
    assert "needs cifar-10-python.tar.gz" in " ".join(text.split())


def test_data_info_names_the_default_cache(tmp_path):
    text = invoke(["data", "info", "mnist-mini"], env={"CIFARBENCH_DATA": str(tmp_path), "COLUMNS": "240"}).stdout
    assert f"data dir: {tmp_path} (from $CIFARBENCH_DATA" in text


def test_data_verify_checks_the_embedded_file(tmp_path):
    checks = verify_dataset("mnist-mini")
    assert [(c.status, c.actual_md5) for c in checks] == [("ok", embedded.MD5)]
    res = invoke(["data", "verify", "mnist-mini", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["status"] == "ok"
    res = invoke(["data", "download", "mnist-mini"])
    assert res.exit_code == 2 and "nothing to download" in res.output
