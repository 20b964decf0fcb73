"""MLX vs PyTorch (the torch backend): logits, optimizer steps, and a short training run.

Every registered model is checked at a small image size with batch 2 (MLX's Linux CPU BLAS
is slow), dropout switched off where the two frameworks' random streams would differ.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("torch")

import torch  # noqa: E402

from cifarbench.backends.base import OptimConfig, TrainOptions  # noqa: E402
from cifarbench.backends.mlx_backend import MLXBackend  # noqa: E402
from cifarbench.backends.torch_backend import TorchBackend  # noqa: E402
from cifarbench.models import create_spec, init_params, model_names  # noqa: E402
from cifarbench.models import spec as S  # noqa: E402
from cifarbench.models.shapes import SpecShapeError, output_shape  # noqa: E402

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
OPTS = TrainOptions(mean=MEAN, std=STD)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def no_dropout(layers):
    out = []
    for layer in layers:
        if isinstance(layer, S.Dropout):
            layer = S.Dropout(0.0)
        elif isinstance(layer, S.Group):
            layer = dataclasses.replace(layer, layers=no_dropout(layer.layers))
        elif isinstance(layer, S.Residual):
            layer = dataclasses.replace(layer, body=no_dropout(layer.body), shortcut=no_dropout(layer.shortcut))
        out.append(layer)
    return tuple(out)


@lru_cache(maxsize=None)
def small_spec(name: str):
    """The model at the smallest of 8/16/32 pixels its layers fit (pure shape inference), without dropout."""
    for size in (8, 16, 32):
        try:
            spec = create_spec(name, image_size=size)
            output_shape(spec)
        except SpecShapeError:
            continue
        return dataclasses.replace(spec, layers=no_dropout(spec.layers))
    raise AssertionError(f"model {name} fits none of 8/16/32 pixels")


def pair(spec, opts=OPTS, state=None):
    state = init_params(spec, 0) if state is None else state
    backends = MLXBackend("cpu", opts, seed=0), TorchBackend("cpu", opts, seed=0)
    for b in backends:
        b.build(spec, state)
    return backends


def images(spec, n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, spec.image_size, spec.image_size, spec.in_channels), dtype=np.uint8)


def float64_logits(spec, state, x, train):
    """Exact-ish reference: the spec walked with torch.nn.functional in float64."""
    F = torch.nn.functional
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in state.items()}

    def run(layers, h):
        for l in layers:
            if isinstance(l, S.Conv):
                h = F.conv2d(h, t[f"{l.name}.weight"], t.get(f"{l.name}.bias"), l.stride, l.pad)
            elif isinstance(l, S.BatchNorm):
                n = l.name
                h = F.batch_norm(h, t[f"{n}.running_mean"], t[f"{n}.running_var"], t[f"{n}.weight"], t[f"{n}.bias"], train, l.momentum, l.eps)
            elif isinstance(l, S.ReLU):
                h = F.leaky_relu(h, l.slope) if l.slope else F.relu(h)
            elif isinstance(l, (S.MaxPool, S.AvgPool)):
                h = (F.max_pool2d if isinstance(l, S.MaxPool) else F.avg_pool2d)(h, l.k, l.stride)
            elif isinstance(l, S.GlobalAvgPool):
                h = h.mean((2, 3))
            elif isinstance(l, S.Flatten):
                h = h.flatten(1)
            elif isinstance(l, S.Linear):
                h = F.linear(h, t[f"{l.name}.weight"], t.get(f"{l.name}.bias"))
            elif isinstance(l, S.Group):
                h = run(l.layers, h)
            elif isinstance(l, S.Residual):
                h = run(l.body, h) + (run(l.shortcut, h) if l.shortcut else h)
                h = F.relu(h) if l.relu_after else h
            elif not isinstance(l, S.Dropout):
                raise TypeError(type(l))
        return h

    with torch.no_grad():
        return run(spec.layers, torch.tensor(x, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("train", [False, True])
def test_logits_match_torch(name, train):
    spec = small_spec(name)
    mlx_b, torch_b = pair(spec)
    x = np.random.default_rng(2).standard_normal((2, spec.in_channels, spec.image_size, spec.image_size)).astype(np.float32)
    points = spec.capture_points[:2]
    lm, cm = mlx_b.forward(x, train=train, capture=points, dropout=False)
    lt, ct = torch_b.forward(x, train=train, capture=points, dropout=False)
    assert lm.shape == lt.shape == (2, spec.num_classes)
    if not train:
        assert rel(lm, lt) < 1e-4
        for p in points:
            assert cm[p].shape == ct[p].shape and rel(cm[p], ct[p]) < 1e-4
        return
    # Train-mode BN over 2 samples at 1x1 pixels (deep ResNets at 8 px) is ill-conditioned:
    # there torch's own float32 logits differ from float64 by up to 0.7 (resnet50). So MLX must
    # be as close to the float64 answer as torch is, and within 1e-4 of torch where torch is exact.
    ref = float64_logits(spec, init_params(spec, 0), x, True)
    err_torch, err_mlx = rel(lt, ref), rel(lm, ref)
    assert err_mlx < max(1e-4, 3 * err_torch), (err_mlx, err_torch)
    if err_torch < 2e-5:
        assert rel(lm, lt) < 1e-4
    # BN running statistics were updated the same way (unbiased running_var).
    sm, st = mlx_b.state_dict(), torch_b.state_dict()
    buffers = list(spec.buffer_shapes())
    if buffers:
        assert rel(np.concatenate([sm[k] for k in buffers]), np.concatenate([st[k] for k in buffers])) < 1e-4


def _steps(spec, opt, n_steps, bs=2, wd_lr=(0.05, 0.9)):
    mlx_b, torch_b = pair(spec)
    x = images(spec, bs * n_steps)
    y = np.arange(bs * n_steps, dtype=np.int64) % spec.num_classes
    before = mlx_b.state_dict()
    for b in (mlx_b, torch_b):
        b.configure_optimizer(opt)
        b.set_data("train", x, y)
        b.begin_epoch(np.arange(len(x)), None, None, seed=0)
        for i in range(n_steps):
            b.train_step(i * bs, (i + 1) * bs, lr=wd_lr[0] * (1 + i), momentum=wd_lr[1] - 0.05 * i)
    return before, mlx_b, torch_b


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize(
    "opt", [OptimConfig("sgd", momentum=0.9, weight_decay=5e-4), OptimConfig("adamw", weight_decay=0.05)], ids=["sgd", "adamw"]
)
def test_optimizer_steps_match_torch(name, opt):
    spec = small_spec(name)
    n_steps = 1 if spec.num_params() > 2_000_000 else 2  # the second step exercises momentum/beta1 changes
    lr = (0.05, 0.9) if opt.name == "sgd" else (1e-3, 0.9)
    before, mlx_b, torch_b = _steps(spec, opt, n_steps, wd_lr=lr)
    sm, st = mlx_b.state_dict(), torch_b.state_dict()
    moved = 0
    for k in spec.param_shapes():
        assert rel(sm[k], st[k]) < 1e-4, k
        moved += not np.array_equal(st[k], before[k])
    assert moved == len(spec.param_shapes())  # every parameter was actually updated
    om, ot = mlx_b.optimizer_state(), torch_b.optimizer_state()
    assert float(om["step"]) == float(ot["step"]) == n_steps
    # Moments/gradients compared as one vector: bias grads of conv layers followed by BN are
    # round-off sized (BN cancels a bias), so their per-tensor relative error means nothing.
    keys = sorted(k for k in ot if k != "step")
    assert set(keys) <= set(om)
    assert rel(np.concatenate([om[k].ravel() for k in keys]), np.concatenate([ot[k].ravel() for k in keys])) < 1e-4
    stats_m, stats_t = mlx_b.end_epoch(), torch_b.end_epoch()
    assert stats_m.count == stats_t.count == 2 * n_steps
    assert abs(stats_m.loss_sum - stats_t.loss_sum) < 1e-4 * abs(stats_t.loss_sum)


def test_checkpoints_cross_load():
    spec = small_spec("cnn")
    opt = OptimConfig("sgd", momentum=0.9, weight_decay=5e-4)
    _, mlx_b, torch_b = _steps(spec, opt, 1)
    # MLX -> torch and torch -> MLX: same weights, buffers and optimizer state back out.
    fresh_t, fresh_m = TorchBackend("cpu", OPTS), MLXBackend("cpu", OPTS)
    fresh_t.build(spec, mlx_b.state_dict())
    fresh_m.build(spec, torch_b.state_dict())
    for fresh, src in ((fresh_t, mlx_b), (fresh_m, torch_b)):
        fresh.configure_optimizer(opt)
        fresh.load_optimizer_state(src.optimizer_state())
        for k, v in src.state_dict().items():
            np.testing.assert_array_equal(fresh.state_dict()[k], v)
        for k, v in src.optimizer_state().items():
            np.testing.assert_array_equal(fresh.optimizer_state()[k], v)


def test_short_training_run_tracks_torch():
    """cnn, 256 synthetic images (8 px), 2 epochs of batch 32, SGD + label smoothing: per-step losses agree."""
    spec = small_spec("cnn")
    opts = TrainOptions(mean=MEAN, std=STD, label_smoothing=0.1)
    mlx_b, torch_b = pair(spec, opts)
    rng = np.random.default_rng(3)
    y = rng.integers(0, spec.num_classes, 256)
    # Learnable synthetic data: a class-dependent brightness pattern plus noise.
    x = np.clip(rng.normal(128, 40, (256, 8, 8, 3)) + 60 * np.sin(y[:, None, None, None] + np.arange(8)[None, :, None, None]), 0, 255)
    x = x.astype(np.uint8)
    curves = {id(mlx_b): [], id(torch_b): []}
    for b in (mlx_b, torch_b):
        b.configure_optimizer(OptimConfig("sgd", momentum=0.9, weight_decay=5e-4, nesterov=True))
        b.set_data("train", x, y)
        for epoch in range(2):
            order = np.random.default_rng(epoch).permutation(256)
            for i in range(8):
                b.begin_epoch(order, None, None, seed=epoch)  # one step per "epoch" to read each loss
                b.train_step(i * 32, (i + 1) * 32, lr=0.02, momentum=0.9)
                curves[id(b)].append(b.end_epoch().loss_sum / 32)
    lm, lt = np.array(curves[id(mlx_b)]), np.array(curves[id(torch_b)])
    gap = float(np.max(np.abs(lm - lt)))
    print(f"largest loss gap over {len(lm)} steps: {gap:.2e} (losses {lt[0]:.4f} -> {lt[-1]:.4f})")
    assert lt[-1] < lt[0]  # it learns
    assert gap < 1e-3
