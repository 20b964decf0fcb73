"""MLX backend unit tests: probe, layouts, on-device augmentation, precision, checkpoints, errors."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from cifarbench.backends import create_backend  # noqa: E402
from cifarbench.backends.base import OptimConfig, TrainOptions  # noqa: E402
from cifarbench.backends.mlx_backend import MLXBackend  # noqa: E402
from cifarbench.backends.mlx_backend.data import DeviceSplit, gather_batch  # noqa: E402
from cifarbench.errors import CheckpointError, UsageError  # noqa: E402
from cifarbench.models import create_spec, init_params  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def made(precision="fp32", **kw):
    b = MLXBackend("cpu", TrainOptions(mean=MEAN, std=STD, precision=precision, **kw), seed=0)
    spec = create_spec("cnn", image_size=8)
    b.build(spec, init_params(spec, 0))
    return b, spec


def data(n=16, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_probe_and_registry():
    probe = MLXBackend.probe()
    assert probe["cpu"] is None
    assert set(probe) == {"gpu", "cpu"}
    if probe["gpu"] is not None:  # mlx[cpu] on Linux: a one-line reason
        assert "\n" not in probe["gpu"] and probe["gpu"]
        assert MLXBackend.auto_device() == "cpu"
    b = create_backend("mlx", "cpu", TrainOptions())
    assert isinstance(b, MLXBackend) and b.describe().startswith("mlx cpu")


def test_augmentation_matches_numpy_reference():
    """Crop on zero-padded uint8 at (dy, dx), then mirror, exactly as base.py specifies."""
    x, y = data(6, 8)
    pad = 2
    split = DeviceSplit(x, y, pad)
    rng = np.random.default_rng(1)
    idx = np.array([5, 0, 3, 3, 1])
    offs = rng.integers(0, 2 * pad + 1, (5, 2))
    flips = np.array([True, False, True, False, True])
    got = np.array(gather_batch(split, mx.array(idx), mx.array(offs.astype(np.int32)), mx.array(flips)))
    padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    for i, (j, (dy, dx), f) in enumerate(zip(idx, offs, flips)):
        want = padded[j, dy : dy + 8, dx : dx + 8]
        np.testing.assert_array_equal(got[i], want[:, ::-1] if f else want)
    # no offsets: the unpadded image
    np.testing.assert_array_equal(np.array(gather_batch(split, mx.array(idx), None, None)), x[idx])


def test_state_dict_is_canonical_and_round_trips():
    b, spec = made()
    sd = b.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {**spec.param_shapes(), **spec.buffer_shapes()}
    assert b.params["conv1.weight"].shape == (32, 3, 3, 3)  # OHWI inside ...
    w = init_params(spec, 0)["conv1.weight"]
    np.testing.assert_array_equal(sd["conv1.weight"], w)  # ... OIHW outside
    np.testing.assert_array_equal(np.array(b.params["conv1.weight"]), w.transpose(0, 2, 3, 1))
    with pytest.raises(CheckpointError):
        b.load_state_dict({k: v for k, v in sd.items() if k != "fc2.bias"})
    with pytest.raises(CheckpointError):
        b.load_state_dict({**sd, "fc2.bias": np.zeros(3, np.float32)})


def test_training_epoch_with_augmentation_and_dropout():
    b, spec = made(crop_pad=2, flip=True, label_smoothing=0.1)
    b.configure_optimizer(OptimConfig("adamw", weight_decay=0.01))
    x, y = data(40)
    b.set_data("train", x, y)
    b.set_data("test", x[:10], y[:10])
    rng = np.random.default_rng(0)
    losses = []
    for epoch in range(3):
        b.begin_epoch(rng.permutation(40), rng.integers(0, 5, (40, 2)), rng.random(40) < 0.5, seed=epoch)
        for start in range(0, 40, 16):  # the last batch is short (8)
            b.train_step(start, min(start + 16, 40), lr=3e-3, momentum=0.9)
        stats = b.end_epoch()
        assert stats.count == 40 and 0 <= stats.correct <= 40
        losses.append(stats.loss_sum / 40)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert float(b.optimizer_state()["step"]) == 9
    logits = b.predict("test", 4)
    assert logits.shape == (10, 10) and logits.dtype == np.float32
    ref, _ = b.forward(((x[:10] / 255.0 - MEAN) / STD).astype(np.float32).transpose(0, 3, 1, 2))
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)


def test_dropout_is_reseeded_per_epoch():
    """Same epoch seed -> same dropout masks -> same loss; another seed -> another loss."""
    x, y = data(8)
    out = []
    for seed in (7, 7, 8):
        b, _ = made()
        b.configure_optimizer(OptimConfig("sgd"))
        b.set_data("train", x, y)
        b.begin_epoch(np.arange(8), None, None, seed=seed)
        b.train_step(0, 8, lr=0.1, momentum=0.9)
        out.append(b.end_epoch().loss_sum)
    assert out[0] == out[1] and out[0] != out[2]


def test_bf16_keeps_master_weights_and_bn_stats_fp32():
    b, _ = made("bf16")
    b.configure_optimizer(OptimConfig("sgd", weight_decay=5e-4))
    x, y = data(8)
    b.set_data("train", x, y)
    b.begin_epoch(np.arange(8), None, None, seed=0)
    b.train_step(0, 8, lr=0.1, momentum=0.9)
    stats = b.end_epoch()
    assert np.isfinite(stats.loss_sum)
    assert all(v.dtype == mx.float32 for v in b.params.values())
    assert all(v.dtype == mx.float32 for v in b.buffers.values())
    f32, _ = made("fp32")
    x_in = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    lb, _ = made("bf16")[0].forward(x_in)
    lf, _ = f32.forward(x_in)
    assert 0 < np.linalg.norm(lb - lf) / np.linalg.norm(lf) < 0.05  # bf16 really ran, and is close


def test_bad_options_raise_clear_errors():
    with pytest.raises(UsageError):
        MLXBackend("cpu", TrainOptions(precision="fp16"))
    with pytest.raises(UsageError):
        MLXBackend("tpu", TrainOptions())
    with pytest.raises(UsageError):
        MLXBackend("cpu", TrainOptions(extra={"loader": "dali"}))
    b, _ = made()
    with pytest.raises(UsageError):
        b.forward(np.zeros((1, 3, 8, 8), np.float32), capture=("nope",))
    with pytest.raises(UsageError):
        b.train_step(0, 2, 0.1, 0.9)  # no optimizer yet


def test_memory_limit_option():
    before = mx.set_memory_limit(2**40)  # returns the previous limit
    try:
        MLXBackend("cpu", TrainOptions(extra={"memory_limit_gb": 1.5}))
        assert mx.set_memory_limit(2**40) == int(1.5 * 2**30)
    finally:
        mx.set_memory_limit(before)
