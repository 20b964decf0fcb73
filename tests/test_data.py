"""Data layer: parsing of every format, the .npy cache, checksum warnings, splits, augmentation, CLI."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cifarbench.data import (
    DATASET_NAMES,
    Dataset,
    load_dataset,
    make_synthetic,
    split_validation,
    verify_dataset,
)
from cifarbench.data import augment, cache, formats
import data_fixtures as testing
from cifarbench.errors import DataError, UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----- official formats ---------------------------------------------------------------------------


def test_cifar10_folder_loads_nhwc_and_warns_on_checksum(tmp_path):
    written = testing.write_cifar10(tmp_path, per_batch=20)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert ds.x_train.shape == (100, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    # planar rows must come back as the exact NHWC images written
    np.testing.assert_array_equal(ds.x_train, written["x_train"])
    np.testing.assert_array_equal(ds.y_test, written["y_test"])
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10
    assert (ds.channels, ds.image_size) == (3, 32)
    # generated files are not the official release: accepted, with one visible warning
    assert len(ds.warnings) == 1 and "differ from the official release" in ds.warnings[0]
    assert "data_batch_1" in ds.warnings[0]


def test_cifar100_fine_and_coarse(tmp_path):
    written = testing.write_cifar100(tmp_path)
    fine = load_dataset("cifar100", tmp_path, download=False)
    coarse = load_dataset("cifar100-coarse", tmp_path, download=False)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.class_names[7] == "fine7" and coarse.class_names[3] == "coarse3"
    np.testing.assert_array_equal(fine.y_train, written["y_fine_train"])
    np.testing.assert_array_equal(coarse.y_test, written["y_coarse_test"])
    np.testing.assert_array_equal(fine.x_test, coarse.x_test)
    assert load_dataset("CIFAR-100", tmp_path, download=False).name == "cifar100"  # alias


@pytest.mark.parametrize(
    "name,sub,gz", [("mnist", "mnist", True), ("mnist", "MNIST/raw", False), ("fashion-mnist", "FashionMNIST/raw", True)]
)
def test_idx_sets_gz_or_raw(tmp_path, name, sub, gz):
    written = testing.write_idx_set(tmp_path / sub, gz=gz)
    ds = load_dataset(name, tmp_path, download=False)
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(ds.x_train, written["x_train"])
    np.testing.assert_array_equal(ds.y_test, written["y_test"])
    assert ds.channels == 1 and ds.num_classes == 10
    if name == "fashion-mnist":
        assert ds.class_names[0] == "T-shirt/top"
    # .gz files and MNIST raw files have official md5s (mismatch warns); Fashion raw ones do not
    assert ds.warnings and "differ from the official release" in ds.warnings[0]


def test_truncated_or_malformed_files_are_refused(tmp_path):
    testing.write_cifar10(tmp_path, per_batch=10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3.*truncated"):
        load_dataset("cifar10", tmp_path, download=False)

    mn = tmp_path / "m"
    testing.write_idx_set(mn / "mnist", gz=True)
    gz_file = mn / "mnist" / "train-images-idx3-ubyte.gz"
    gz_file.write_bytes(gz_file.read_bytes()[:-200])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_dataset("mnist", mn, download=False)

    raw = tmp_path / "r" / "mnist"
    testing.write_idx_set(raw, gz=False)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(testing.idx_bytes(np.zeros(10, np.uint8))[:-3])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*header says"):
        load_dataset("mnist", tmp_path / "r", download=False)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        formats.read_pickle(path)


def test_wrong_cifar_contents_are_refused(tmp_path):
    testing.write_cifar10(tmp_path, per_batch=4)
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"test_batch.*\(N, 3072\)"):
        load_dataset("cifar10", tmp_path, download=False)


def test_unknown_name_and_missing_offline(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'.*cifar10"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, download=False)
    text = str(err.value)
    assert str(tmp_path) in text and "cifar-10-python.tar.gz" in text and "--data-dir" in text
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in text


def test_dataset_names_and_default_dir(monkeypatch, tmp_path):
    assert {"cifar10", "cifar100", "cifar100-coarse", "mnist", "fashion-mnist", "synthetic"} <= set(DATASET_NAMES)
    from cifarbench.data import default_data_dir

    monkeypatch.setenv("CIFARBENCH_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    testing.write_cifar10(tmp_path, per_batch=2)
    assert load_dataset("cifar10", download=False).x_test.shape == (2, 32, 32, 3)  # env dir used


# ----- cache ----------------------------------------------------------------------------------------


def test_npy_cache_reused_and_invalidated(tmp_path, monkeypatch):
    testing.write_cifar10(tmp_path, per_batch=8)
    first = load_dataset("cifar10", tmp_path, download=False)
    assert cache.location(tmp_path / "cifar-10-batches-py", "cifar10").joinpath("meta.json").is_file()
    calls = []
    real_parse = formats.parse_cifar
    monkeypatch.setattr(formats, "parse_cifar", lambda *a: calls.append(a) or real_parse(*a))
    second = load_dataset("cifar10", tmp_path, download=False)
    assert calls == []  # served from the cache
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert second.warnings == first.warnings and second.mean() == first.mean()
    # rewriting a source file (new size and mtime) invalidates the cache
    written = testing.write_cifar10(tmp_path, per_batch=9, seed=5)
    third = load_dataset("cifar10", tmp_path, download=False)
    assert len(calls) == 1 and third.x_train.shape[0] == 45
    np.testing.assert_array_equal(third.x_train, written["x_train"])


@pytest.mark.parametrize("mode", [0o755, 0o555], ids=["writable", "read-only"])
def test_data_folder_is_never_written_and_cache_lives_apart(tmp_path, monkeypatch, mode):
    """Writable or not (root ignores the mode anyway), the user's data folder stays byte-for-byte
    untouched; the parsed cache goes to the cache root and serves the second load."""
    from conftest import tree_state

    monkeypatch.setenv("CIFARBENCH_CACHE", str(tmp_path / "cache-root"))
    data = tmp_path / "data"
    testing.write_idx_set(data / "mnist")
    (data / "mnist").chmod(mode)
    try:
        before = tree_state(data)
        first = load_dataset("mnist", data, download=False)
        assert tree_state(data) == before
        where = cache.location(data / "mnist", "mnist")
        assert where.is_relative_to(tmp_path / "cache-root") and (where / "meta.json").is_file()
        calls = []
        real_parse = formats.parse_idx
        monkeypatch.setattr(formats, "parse_idx", lambda *a: calls.append(a) or real_parse(*a))
        second = load_dataset("mnist", data, download=False)
        assert calls == [] and tree_state(data) == before
        np.testing.assert_array_equal(first.x_train, second.x_train)
    finally:
        (data / "mnist").chmod(0o755)


def test_unwritable_cache_root_loads_uncached(tmp_path, monkeypatch):
    # A cache root below a regular file cannot be created, for root too.
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("CIFARBENCH_CACHE", str(tmp_path / "file" / "cache"))
    testing.write_idx_set(tmp_path / "mnist")
    assert load_dataset("mnist", tmp_path, download=False).x_train.shape == (30, 28, 28, 1)
    assert load_dataset("mnist", tmp_path, download=False).x_train.shape == (30, 28, 28, 1)


def test_same_data_in_two_folders_gets_two_caches(tmp_path):
    a = testing.write_idx_set(tmp_path / "a" / "mnist")
    testing.write_idx_set(tmp_path / "b" / "mnist", seed=1)
    assert cache.location(tmp_path / "a" / "mnist", "mnist") != cache.location(tmp_path / "b" / "mnist", "mnist")
    np.testing.assert_array_equal(load_dataset("mnist", tmp_path / "a", download=False).x_train, a["x_train"])
    assert not np.array_equal(load_dataset("mnist", tmp_path / "b", download=False).x_train, a["x_train"])


def test_damaged_cache_is_rebuilt(tmp_path):
    testing.write_idx_set(tmp_path / "mnist")
    load_dataset("mnist", tmp_path, download=False)
    npy = cache.location(tmp_path / "mnist", "mnist") / "x_train.npy"
    npy.write_bytes(b"garbage")
    ds = load_dataset("mnist", tmp_path, download=False)
    assert ds.x_train.shape == (30, 28, 28, 1)


# ----- npz and synthetic ------------------------------------------------------------------------------


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "gray"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 16, 16, 3 if layout != "gray" else 1), dtype=np.uint8)
    stored = {"nhwc": x, "nchw": x.transpose(0, 3, 1, 2), "gray": x[..., 0]}[layout]
    y = np.arange(12) % 4
    name = _write_npz(tmp_path / "d.npz", x_train=stored, y_train=y, x_test=stored[:5], y_test=y[:5])
    ds = load_dataset(name)
    np.testing.assert_array_equal(ds.x_train, x)
    assert ds.num_classes == 4 and ds.class_names == ["0", "1", "2", "3"] and ds.image_size == 16


def test_npz_class_names_and_errors(tmp_path):
    x = np.zeros((4, 8, 8, 3), np.uint8)
    y = np.array([0, 1, 2, 1])
    ok = _write_npz(tmp_path / "ok.npz", x_train=x, y_train=y, x_test=x, y_test=y, class_names=np.array(["a", "b", "c"]))
    assert load_dataset(ok).class_names == ["a", "b", "c"]
    cases = {
        "missing": ({"x_train": x, "y_train": y, "x_test": x}, "lacks y_test"),
        "float": ({"x_train": x.astype(np.float32), "y_train": y, "x_test": x, "y_test": y}, "must be uint8"),
        "count": ({"x_train": x, "y_train": y[:3], "x_test": x, "y_test": y}, "3 labels for 4 images"),
        "shape": ({"x_train": np.zeros((4, 8, 8, 5), np.uint8), "y_train": y, "x_test": x, "y_test": y}, "C 1 or 3"),
        "names": ({"x_train": x, "y_train": y, "x_test": x, "y_test": y, "class_names": np.array(["a"])}, "class_names"),
    }
    for key, (arrays, message) in cases.items():
        with pytest.raises(DataError, match=message):
            load_dataset(_write_npz(tmp_path / f"{key}.npz", **arrays))
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


def test_synthetic_is_seeded_balanced_and_learnable():
    a, b = make_synthetic(), load_dataset("synthetic")
    assert a.x_train.shape == (5000, 32, 32, 3) and a.x_test.shape == (1000, 32, 32, 3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, make_synthetic(seed=1).x_train)
    assert np.bincount(a.y_train).tolist() == [500] * 10
    # nearest class-mean classifier: the labels carry signal
    small = make_synthetic(n_train=500, n_test=200, image_size=16)
    xt = small.x_train.reshape(500, -1).astype(np.float32)
    means = np.stack([xt[small.y_train == k].mean(0) for k in range(10)])
    xs = small.x_test.reshape(200, -1).astype(np.float32)
    pred = np.argmin(((xs[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == small.y_test).mean() > 0.9


def test_mean_std_match_float_computation():
    ds = make_synthetic(n_train=300, n_test=10, image_size=8, seed=3)
    ref = ds.x_train.astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean(), ref.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(ds.std(), ref.std(axis=(0, 1, 2)), rtol=1e-12)
    assert all(isinstance(v, float) for v in ds.mean() + ds.std())


def test_dataset_rejects_bad_arrays():
    x = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(DataError, match="uint8 NHWC"):
        Dataset("t", x.astype(np.float32), np.zeros(3), x, np.zeros(3), ["a"])
    with pytest.raises(DataError, match="3 integer labels"):
        Dataset("t", x, np.zeros(2, np.int64), x, np.zeros(3, np.int64), ["a"])


# ----- validation split ---------------------------------------------------------------------------------


def test_split_validation_sizes_disjoint_stratified_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 1000)
    x = np.arange(1000)  # the images are their own indices, so disjointness is checkable
    xt, yt, xv, yv = split_validation(x, y, 100, seed=1)
    assert len(xv) == 100 and len(xt) == 900
    assert set(xt).isdisjoint(xv) and set(xt) | set(xv) == set(range(1000))
    np.testing.assert_array_equal(y[xv], yv)
    expected = np.bincount(y, minlength=7) * 0.1
    assert np.all(np.abs(np.bincount(yv, minlength=7) - expected) < 1)  # stratified (largest remainder)
    again = split_validation(x, y, 100, seed=1)
    np.testing.assert_array_equal(again[2], xv)
    assert not np.array_equal(split_validation(x, y, 100, seed=2)[2], xv)
    assert len(split_validation(x, y, 0, seed=0)[2]) == 0
    with pytest.raises(UsageError):
        split_validation(x, y, 1000, seed=0)


# ----- augmentation reference -----------------------------------------------------------------------------


def test_draw_epoch_shapes_ranges_and_seeding():
    order, offsets, flips = augment.draw_epoch(np.random.default_rng(4), 50, 4, True)
    assert sorted(order.tolist()) == list(range(50))
    assert offsets.shape == (50, 2) and offsets.min() >= 0 and offsets.max() <= 8 and offsets.dtype == np.int64
    assert flips.dtype == bool and 0 < flips.sum() < 50
    order2, none_off, none_flip = augment.draw_epoch(np.random.default_rng(4), 50, 0, False)
    assert none_off is None and none_flip is None
    np.testing.assert_array_equal(order, order2)  # switching augmentation off keeps the data order


def test_apply_numpy_crop_flip_and_normalise():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    pad, mean, std = 2, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    order = np.array([3, 0, 5])
    offsets = np.array([[0, 4], [2, 2], [1, 3]])
    flips = np.array([False, True, True])
    out = augment.apply_numpy(x, order, offsets, flips, pad, mean, std)
    assert out.shape == (3, 3, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    m, s = np.array(mean, np.float32), np.array(std, np.float32)
    for i, (img, (dy, dx), f) in enumerate(zip(order, offsets, flips)):
        crop = padded[img, dy : dy + 8, dx : dx + 8]
        if f:
            crop = crop[:, ::-1]
        expected = ((crop.astype(np.float32) / 255 - m) / s).transpose(2, 0, 1)
        np.testing.assert_allclose(out[i], expected, rtol=1e-6, atol=1e-6)
    # a known shift: offset (dy, dx) = (0, 4) with pad 2 moves the content down 2 rows and left 2 columns
    raw = augment.apply_numpy(x, order[:1], offsets[:1], None, pad, (0,), (1,))
    np.testing.assert_allclose(raw[0, :, 2:, :6], x[3, :6, 2:].transpose(2, 0, 1) / 255, atol=1e-7)
    assert np.all(raw[0, :, :2] == 0) and np.all(raw[0, :, :, 6:] == 0)  # black border


def test_apply_numpy_without_augmentation_equals_normalise_and_flip_mirrors():
    x = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)
    order = np.arange(4)
    plain = augment.apply_numpy(x, order, None, None, 0, (0.1,), (0.3,))
    np.testing.assert_array_equal(plain, augment.normalize(x, (0.1,), (0.3,)))
    flipped = augment.apply_numpy(x, order, None, np.ones(4, bool), 0, (0.1,), (0.3,))
    np.testing.assert_array_equal(flipped, plain[..., ::-1])
    with pytest.raises(UsageError):
        augment.apply_numpy(x, order, np.full((4, 2), 9), None, 2, (0.1,), (0.3,))


# ----- verify and real data ------------------------------------------------------------------------------


def test_verify_reports_mismatch_and_missing(tmp_path):
    testing.write_cifar10(tmp_path, per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    report = {Path(c.path).name: c for c in verify_dataset("cifar10", tmp_path)}
    assert report["data_batch_5"].status == "missing" and report["data_batch_5"].actual_md5 is None
    assert report["data_batch_1"].status == "mismatch"
    assert report["data_batch_1"].expected_md5 == "c99cafc152244af753f735de768cd75f"
    assert verify_dataset("synthetic", tmp_path) == []


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST not present")
def test_real_mnist_from_shared_data():
    from conftest import tree_state

    before = tree_state(SHARED / "mnist")
    ds = load_dataset("mnist", SHARED, download=False)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.warnings == []  # byte-identical to the official release
    assert abs(ds.mean()[0] - 0.1307) < 1e-4 and abs(ds.std()[0] - 0.3081) < 1e-4
    assert all(c.status == "ok" for c in verify_dataset("mnist", SHARED))
    assert tree_state(SHARED / "mnist") == before  # nothing written beside the user's files


# ----- CLI ------------------------------------------------------------------------------------------------


@pytest.fixture()
def cli():
    import typer
    from typer.testing import CliRunner

    from cifarbench.cli import data_cmd

    app = typer.Typer()
    data_cmd.register(app)

    @app.callback()
    def _root() -> None:  # a callback keeps `data` a sub-command even when it is the only one
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_info_and_verify(cli, tmp_path):
    testing.write_cifar10(tmp_path, per_batch=3)
    res = cli("data", "info", "cifar10", "--data-dir", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["train"] == 15 and info["image_shape"] == [32, 32, 3] and len(info["mean"]) == 3
    res = cli("data", "info", "--data-dir", str(tmp_path), "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["cifar10"]["test"] == 3 and "error" in rows["mnist"] and rows["synthetic"]["train"] == 5000
    res = cli("data", "verify", "cifar10", "--data-dir", str(tmp_path), "--json")
    assert isinstance(res.exception, DataError)  # mismatches are a failed verification
    assert {r["status"] for r in json.loads(res.stdout)} == {"mismatch"}
    res = cli("data", "info", "nope")
    assert isinstance(res.exception, UsageError)
