"""NumPy backend behaviour: augmentation, eval BN, dropout seeding, state round trips, probes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.backends.numpy_backend import CupyBackend, NumpyBackend
from cifarbench.backends.numpy_backend.arrays import blas_threads
from cifarbench.backends.numpy_backend.augment import make_batch
from cifarbench.errors import CheckpointError, UsageError
from cifarbench.models import create_spec, init_params

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def make(model="cnn", size=16, **opts):
    spec = create_spec(model, image_size=size)
    be = NumpyBackend("cpu", TrainOptions(mean=MEAN, std=STD, **opts))
    be.build(spec, init_params(spec, seed=0))
    return spec, be


def data(n, size=16, seed=0):
    """Images whose class is their colour (plus noise): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int64)
    palette = rng.integers(0, 256, (10, 1, 1, 3))
    x = np.clip(palette[y] + rng.integers(-40, 41, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return x, y


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tests run on a shared, busy CPU, where 2-thread OpenBLAS GEMMs stall (see blas_threads)."""
    before = blas_threads()
    blas_threads(1)
    yield
    if before is not None:
        blas_threads(before)


def test_augmentation_matches_reference():
    augment = pytest.importorskip("cifarbench.data.augment")
    x, _ = data(20, size=8)
    rng = np.random.default_rng(5)
    order, offsets, flips = rng.permutation(20), rng.integers(0, 9, (20, 2)), rng.random(20) < 0.5
    sl = slice(3, 15)
    ours = make_batch(x, order[sl], offsets[sl], flips[sl], 4, np.float32(MEAN), np.float32(STD), np.float32)
    ref = augment.apply_numpy(x, order[sl], offsets[sl], flips[sl], 4, MEAN, STD)
    np.testing.assert_array_equal(ours.transpose(0, 3, 1, 2), ref)


def test_augmentation_definition():
    """Pixel (r, c) of a crop at (dy, dx) is padded[dy + r, dx + c]; flipping mirrors the width."""
    x, _ = data(2, size=6)
    pad = 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offs = np.array([[0, 4], [3, 1]])
    one = np.zeros(1), np.array([1.0 / 255])  # normalise back to raw pixel values
    out = make_batch(x, np.array([1, 0]), offs, np.array([False, True]), pad, *one, np.float64)
    np.testing.assert_allclose(out[0], padded[1, 0:6, 4:10], rtol=1e-12)
    np.testing.assert_allclose(out[1], padded[0, 3:9, 1:7][:, ::-1], rtol=1e-12)


def test_eval_logits_do_not_depend_on_batch_size():
    spec, be = make()
    x, y = data(50)
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9))
    be.set_data("train", x, y)
    be.begin_epoch(np.arange(50), None, None, seed=0)
    for start in range(0, 50, 10):  # move the running statistics away from (0, 1)
        be.train_step(start, start + 10, 0.05, 0.9)
    be.set_data("test", x, y)
    a, b = be.predict("test", 7), be.predict("test", 50)
    assert a.shape == (50, 10)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(be.state_dict()["bn1.running_var"], 1.0)


def test_dropout_is_repeatable_per_epoch_seed():
    spec, be = make()
    x, y = data(8)
    be.set_data("train", x, y)
    state = be.state_dict()
    runs = []
    for seed in (1, 1, 2):
        be.load_state_dict(state)
        be.configure_optimizer(OptimConfig("sgd", momentum=0.9))
        be.begin_epoch(np.arange(8), None, None, seed=seed)
        be.train_step(0, 8, 0.1, 0.9)
        runs.append(be.state_dict()["fc2.weight"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_training_reduces_loss_and_stats_accumulate():
    spec, be = make(label_smoothing=0.1, crop_pad=2, flip=True)
    x, y = data(32)
    be.set_data("train", x, y)
    be.configure_optimizer(OptimConfig("adamw", weight_decay=0.01))
    rng = np.random.default_rng(0)
    losses = []
    for epoch in range(4):
        be.begin_epoch(rng.permutation(32), rng.integers(0, 5, (32, 2)), rng.random(32) < 0.5, seed=epoch)
        for start in range(0, 32, 16):
            be.train_step(start, start + 16, 1e-2, 0.9)
        stats = be.end_epoch()
        assert stats.count == 32 and 0 <= stats.correct <= 32
        losses.append(stats.loss_sum / stats.count)
    assert losses[-1] < 0.7 * losses[0], losses


def test_state_and_optimizer_round_trip():
    spec, be = make()
    x, y = data(8)
    be.set_data("train", x, y)
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4))
    be.begin_epoch(np.arange(8), None, None, seed=0)
    be.train_step(0, 8, 0.1, 0.9)
    st, ost = be.state_dict(), be.optimizer_state()
    assert st["conv1.weight"].shape == (32, 3, 3, 3) and ost["conv1.weight.momentum_buffer"].shape == (32, 3, 3, 3)
    assert float(ost["step"]) == 1.0
    _, other = make()
    other.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4))
    other.load_state_dict(st)
    other.load_optimizer_state(ost)
    other.set_data("train", x, y)
    for b in (be, other):
        b.begin_epoch(np.arange(8), None, None, seed=3)
        b.train_step(0, 8, 0.1, 0.9)
    for k, v in be.state_dict().items():
        np.testing.assert_array_equal(v, other.state_dict()[k], err_msg=k)


def test_bad_inputs_raise_project_errors():
    spec, be = make()
    state = be.state_dict()
    with pytest.raises(CheckpointError):
        be.load_state_dict({k: v for k, v in state.items() if k != "fc2.bias"})
    with pytest.raises(CheckpointError):
        be.load_state_dict({**state, "fc2.bias": np.zeros(3, np.float32)})
    with pytest.raises(UsageError):
        be.train_step(0, 4, 0.1, 0.9)
    with pytest.raises(UsageError):
        NumpyBackend("cpu", TrainOptions(precision="bf16"))


def test_weights_load_in_torch_backend_with_same_logits():
    pytest.importorskip("torch")
    try:
        from cifarbench.backends.torch_backend import TorchBackend
    except ImportError as exc:
        pytest.skip(f"torch backend not importable: {exc}")
    spec, be = make()
    x, y = data(8)
    be.set_data("train", x, y)
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9))
    be.begin_epoch(np.arange(8), None, None, seed=0)
    be.train_step(0, 8, 0.1, 0.9)  # trained weights and non-trivial running statistics
    tb = TorchBackend("cpu", TrainOptions(mean=MEAN, std=STD))
    tb.build(spec, be.state_dict())
    xin = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ours, theirs = be.forward(xin)[0], tb.forward(xin)[0]
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-4


def test_cupy_probe_never_raises_and_numpy_needs_no_cupy():
    probe = CupyBackend.probe()
    assert set(probe) == {"cuda"}
    if importlib.util.find_spec("cupy") is None:
        assert probe["cuda"] == "cupy is not installed (pip install 'cifarbench[cupy]')"
    assert NumpyBackend.probe() == {"cpu": None}
    code = "import sys, cifarbench.backends.numpy_backend as m; m.NumpyBackend.probe(); print('cupy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("model", ["cnn", "resnet20"])
def test_whole_batch_path_of_a_gpu_takes_the_same_steps(model):
    """CuPy runs the same node code with no chunks, lanes or row pieces (``Workspace(None)``: one
    piece of the whole batch). Run that way on NumPy, each of three SGD steps, from the state the
    CPU's pieces-over-lanes path reached (lockstep: free-running float32 trajectories part
    chaotically, 1.8e-6 after one step and 1e-2 after three here), moves the weights as that path
    does: only the order of the partial sums (BN statistics, dw, db) differs. Bound: the contract's
    1e-4, relative over all weight changes (measured 0.8e-6 to 1.7e-6). Max-pools are average pools
    (``parity_reference.continuous``): one near-tie among cnn's 8,192 block-3 windows, routed to
    another pixel, moved the step by 3.7%, a discrete event and not the summation order."""
    import dataclasses

    from cifarbench.backends.numpy_backend.arrays import Workspace
    from parity_reference import continuous

    x, y = data(48)
    opt = OptimConfig("sgd", momentum=0.9, nesterov=True, weight_decay=5e-4)
    spec = create_spec(model, image_size=16)
    spec = dataclasses.replace(spec, layers=continuous(spec.layers))
    pair = []
    for whole in (False, True):
        be = NumpyBackend("cpu", TrainOptions(mean=MEAN, std=STD, label_smoothing=0.1, extra={"threads": 2}))
        be.build(spec, init_params(spec, seed=0))
        if whole:
            be.net.ws = Workspace(None)
        be.configure_optimizer(opt)
        be.set_data("train", x, y)
        pair.append(be)
    pieces, gpu = pair
    names = list(spec.param_shapes())
    for s in range(3):
        gpu.load_state_dict(pieces.state_dict())
        if s:
            gpu.load_optimizer_state(pieces.optimizer_state())
        before = pieces.state_dict()
        moves = []
        for be in pair:
            be.begin_epoch(np.arange(48), None, None, 0)  # same dropout stream for both
            be.train_step(s * 16, s * 16 + 16, 0.05, 0.9)
            after = be.state_dict()
            moves.append(np.concatenate([(after[k] - before[k]).ravel() for k in names]))
        assert np.abs(moves[0]).max() > 0
        gap = np.linalg.norm(moves[0] - moves[1]) / np.linalg.norm(moves[0])
        print(f"step {s}: gap {gap:.1e}")
        assert gap < 1e-4, s


@pytest.mark.parametrize("m", [7, 40, 41])  # fewer rows than a piece; whole pieces; pieces and a remainder
def test_gemm_row_pieces_stay_within_the_dot_product_error_bound(monkeypatch, m):
    """matmul_rows and matmul_t_acc (stacked row pieces of a GEMM, then the remainder rows) compute
    a @ b and acc + a.T @ b: every entry within the forward error bound of a length-L dot product,
    gamma_L * (|a| @ |b|) with gamma_L = L eps / (1 - L eps), L the summed terms (K for a @ b; the
    m rows, the piece sums and acc for a.T @ b)."""
    from cifarbench.backends.numpy_backend import arrays

    monkeypatch.setattr(arrays, "GEMM_CELLS", 8 * 6 * 5)  # 5 rows a piece for K = 8, N = 6
    monkeypatch.setattr(arrays, "GEMM_MIN_ROWS", 2)
    ws = arrays.Workspace(chunk_bytes=1)
    rng = np.random.default_rng(m)
    for dtype in (np.float64, np.float32):
        eps = np.finfo(dtype).eps
        a, b = rng.standard_normal((m, 8)).astype(dtype), rng.standard_normal((8, 6)).astype(dtype)
        out = np.full((m, 6), np.nan, dtype)
        arrays.matmul_rows(a, b, out, ws)
        exact = a.astype(np.float64) @ b.astype(np.float64)
        gamma = 8 * eps / (1 - 8 * eps)
        assert np.all(np.abs(out - exact) <= gamma * (np.abs(a).astype(np.float64) @ np.abs(b)))
        d = rng.standard_normal((m, 6)).astype(dtype)
        acc0 = rng.standard_normal((8, 6)).astype(dtype)
        acc = acc0.copy()
        arrays.matmul_t_acc(a, d, acc, ws)
        exact = acc0.astype(np.float64) + a.T.astype(np.float64) @ d.astype(np.float64)
        terms = m + m // 5 + 2
        gamma = terms * eps / (1 - terms * eps)
        bound = gamma * (np.abs(acc0) + np.abs(a.T).astype(np.float64) @ np.abs(d))
        assert np.all(np.abs(acc - exact) <= bound)
