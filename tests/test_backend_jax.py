"""The JAX backend: registered as a plugin, a compiled step that never syncs with the host,
checkpoints that cross-load with every other installed backend, and a short run that tracks torch.

Its logits/one-step parity with torch runs in test_backend_numpy_parity.py (the same checks as NumPy).
"""

from __future__ import annotations

import dataclasses
from importlib import metadata

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from cifarbench.backends import create_backend, load_backend_class  # noqa: E402
from cifarbench.backends.base import OptimConfig, TrainOptions  # noqa: E402
from cifarbench.backends.jax_backend import JaxBackend  # noqa: E402
from cifarbench.errors import BackendUnavailable, CheckpointError, UsageError  # noqa: E402
from cifarbench.models import create_spec, init_params  # noqa: E402
from parity_reference import no_dropout  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
OPTS = TrainOptions(mean=MEAN, std=STD, crop_pad=2, flip=True, label_smoothing=0.1)


def small_cnn():
    spec = create_spec("cnn", image_size=8)
    return dataclasses.replace(spec, layers=no_dropout(spec.layers))


def data(n=64, size=8, seed=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def draws(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(n), rng.integers(0, 5, (n, 2)), rng.random(n) < 0.5


def test_registered_only_through_the_entry_point_group():
    from cifarbench.backends import BUILTIN

    assert "jax" not in BUILTIN
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="cifarbench.backends")}
    assert eps["jax"] == "cifarbench.backends.jax_backend:JaxBackend"
    assert load_backend_class("jax") is JaxBackend


def test_step_is_compiled_once_and_never_reads_back():
    spec = small_cnn()
    be = JaxBackend("cpu", OPTS)
    be.build(spec, init_params(spec, 0))
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9, weight_decay=5e-4, nesterov=True))
    x, y = data()
    be.set_data("train", x, y)
    order, offsets, flips = draws(len(x))
    be.begin_epoch(order, offsets, flips, seed=1)
    be.train_step(0, 16, 0.05, 0.9)  # compiles
    # any device->host copy inside these steps raises (a host sync would need one)
    with jax.transfer_guard_device_to_host("disallow"):
        for i in range(1, 4):
            be.train_step(i * 16, (i + 1) * 16, 0.05 * i, 0.9 - 0.01 * i)  # new lr/momentum: no recompile
    assert be._step._cache_size() == 1
    stats = be.end_epoch()
    assert stats.count == 64 and np.isfinite(stats.loss_sum) and 0 <= stats.correct <= 64
    be.train_step(0, 10, 0.05, 0.9)  # a new batch size compiles a second program
    assert be._step._cache_size() == 2


def _other_backends():
    out = []
    for name in ("torch", "numpy", "mlx"):
        try:
            load_backend_class(name)
        except BackendUnavailable:
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("other", _other_backends())
def test_checkpoints_cross_load(other):
    """JAX -> other and other -> JAX after one step each: weights, buffers and optimizer state exactly."""
    spec = small_cnn()
    opt = OptimConfig("adamw", weight_decay=0.05)
    x, y = data()
    order, offsets, flips = draws(len(x))
    trained = []
    for name in ("jax", other):
        extra = {"compile": False} if name == "mlx" else {}
        b = create_backend(name, "cpu", dataclasses.replace(OPTS, extra=extra))
        b.build(spec, init_params(spec, 0))
        b.configure_optimizer(opt)
        b.set_data("train", x, y)
        b.begin_epoch(order, offsets, flips, seed=0)
        b.train_step(0, 32, 1e-3, 0.9)
        b.end_epoch()
        trained.append(b)
    for src, dst_name in ((trained[0], other), (trained[1], "jax")):
        dst = create_backend(dst_name, "cpu", OPTS)
        dst.build(spec, src.state_dict())
        dst.configure_optimizer(opt)
        dst.load_optimizer_state(src.optimizer_state())
        for k, v in src.state_dict().items():
            np.testing.assert_array_equal(dst.state_dict()[k], v)
        for k, v in src.optimizer_state().items():
            np.testing.assert_array_equal(dst.optimizer_state()[k], v)


def test_contract_errors_are_the_shared_ones():
    spec = small_cnn()
    be = JaxBackend("cpu", OPTS)
    with pytest.raises(UsageError, match="build"):
        be.state_dict()
    be.build(spec, init_params(spec, 0))
    with pytest.raises(UsageError, match="unknown capture point 'nope'"):
        be.forward(np.zeros((1, 3, 8, 8), np.float32), capture=["nope"])
    bad = init_params(spec, 0)
    bad.pop("fc2.weight")
    with pytest.raises(CheckpointError, match="missing fc2.weight"):
        be.load_state_dict(bad)
    with pytest.raises(UsageError, match="precision"):
        JaxBackend("cpu", TrainOptions(precision="bf16"))


def test_short_training_run_tracks_torch():
    """16 steps of batch 16 with crop, flip, nesterov, weight decay and label smoothing: every step agrees
    with torch to the contract from re-synchronised states (see parity_reference.lockstep), and both
    free-running trajectories learn."""
    from parity_reference import continuous, lockstep

    spec = dataclasses.replace(small_cnn(), layers=continuous(small_cnn().layers))  # see continuous()
    x, y = data(128)

    def make(name):
        try:
            b = create_backend(name, "cpu", dataclasses.replace(OPTS, extra={"channels_last": False}))
        except BackendUnavailable:
            pytest.skip("torch is not installed")
        b.build(spec, init_params(spec, 0))
        b.configure_optimizer(OptimConfig("sgd", momentum=0.9, weight_decay=5e-4, nesterov=True))
        b.set_data("train", x, y)
        return b

    def step(b, n):
        epoch, i = divmod(n, 8)
        order, offsets, flips = draws(len(x), epoch)
        b.begin_epoch(order, offsets, flips, seed=epoch)  # one step per "epoch" to read each loss
        b.train_step(i * 16, (i + 1) * 16, 0.02, 0.9)
        return b.end_epoch().loss_sum / 16

    gaps = lockstep(make("jax"), make("torch"), spec, 16, step)
    worst = gaps.max(axis=0)
    print(f"jax vs torch, lockstep over 16 steps: loss {worst[0]:.1e}, weights {worst[1]:.1e}, momentum {worst[2]:.1e}")
    assert worst.max() < 1e-4, gaps
    lj, lt = (np.array([step(b, n) for n in range(16)]) for b in (make("jax"), make("torch")))
    assert abs(lj[0] - lt[0]) < 1e-4 * lt[0]  # the first step is from identical states
    print(f"free-running losses: jax {lj[0]:.4f} -> {lj[-1]:.4f}, torch {lt[0]:.4f} -> {lt[-1]:.4f}")
    assert lj[-4:].mean() < lj[:4].mean() and lt[-4:].mean() < lt[:4].mean()  # both learn
