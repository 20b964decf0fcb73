"""The PyTorch backend against NumPy references and its own contract (CPU, small sizes)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cifarbench.backends.base import OptimConfig, TrainOptions  # noqa: E402
from cifarbench.backends.torch_backend import TorchBackend  # noqa: E402
from cifarbench.errors import BackendUnavailable, CheckpointError, UsageError  # noqa: E402
from cifarbench.models.registry import create_spec, init_params  # noqa: E402
from cifarbench.models.spec import BatchNorm, Conv, Flatten, Group, Linear, MaxPool, ModelSpec, ReLU  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core box it costs 2-3x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(spec: ModelSpec, seed: int = 0, **opts) -> TorchBackend:
    b = TorchBackend("cpu", TrainOptions(**opts), seed=seed)
    b.build(spec, init_params(spec, seed))
    return b


def linear_spec(c: int = 2, side: int = 3, k: int = 4) -> ModelSpec:
    return ModelSpec("lin", (Flatten(), Linear("fc", c * side * side, k)), c, side, k)


def images(n: int, side: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, c), dtype=np.uint8)


# ----- names, shapes, state ------------------------------------------------------------
@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_state_dict_round_trip_canonical(model):
    spec = create_spec(model, 3, 32, 10)
    state = init_params(spec, seed=3)
    state = {k: v + np.float32(0.01) * i for i, (k, v) in enumerate(state.items())}  # buffers non-trivial too
    b = TorchBackend("cpu", TrainOptions())
    b.build(spec, state)
    out = b.state_dict()
    expected = spec.param_shapes() | spec.buffer_shapes()
    assert list(out) == list(expected)
    for name, shape in expected.items():
        assert out[name].shape == shape and out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], state[name])
    if model == "resnet18":
        logits, caps = b.forward(np.zeros((2, 3, 32, 32), np.float32), capture=["layer1", "layer2.0"])
        assert logits.shape == (2, 10) and logits.dtype == np.float32
        assert caps["layer1"].shape == (2, 64, 32, 32) and caps["layer2.0"].shape == (2, 128, 16, 16)


def test_state_dict_is_a_snapshot_not_a_view():
    """Arrays taken before a step keep their values (CPU tensors would otherwise share memory)."""
    spec = linear_spec()
    b = make(spec)
    b.configure_optimizer(OptimConfig("sgd", momentum=0.0))
    before = b.state_dict()
    kept = {k: v.copy() for k, v in before.items()}
    b.set_data("train", images(4, 3, 2), np.arange(4, dtype=np.int64) % 4)
    b.begin_epoch(np.arange(4), None, None, seed=0)
    b.train_step(0, 4, lr=0.5, momentum=0.0)
    after = b.state_dict()
    for k in kept:
        np.testing.assert_array_equal(before[k], kept[k])
    assert not np.array_equal(after["fc.weight"], kept["fc.weight"])


def test_load_state_dict_rejects_bad_weights_and_ignores_bn_counter():
    spec = create_spec("cnn", 3, 8, 10)
    b = make(spec)
    state = b.state_dict()
    b.load_state_dict(state | {"bn1.num_batches_tracked": np.array(5)})
    with pytest.raises(CheckpointError, match="fc2.weight"):
        b.load_state_dict(state | {"fc2.weight": np.zeros((3, 128), np.float32)})
    with pytest.raises(CheckpointError, match="missing"):
        b.load_state_dict({k: v for k, v in state.items() if k != "bn1.running_var"})


# ----- forward against NumPy -----------------------------------------------------------
def _np_conv(x, w, b, pad):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((n, o, ho, wo), np.float64)
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + ho, j : j + wo], w[:, :, i, j])
    return out + b[None, :, None, None]


def test_logits_match_numpy_reference():
    spec = ModelSpec(
        "mini",
        (
            Group("g", (Conv("c", 2, 3, 3, pad=1), BatchNorm("bn", 3), ReLU(slope=0.1))),
            MaxPool(2, 2),
            Flatten(),
            Linear("fc", 3 * 3 * 3, 4),
        ),
        2,
        6,
        4,
    )
    rng = np.random.default_rng(1)
    state = init_params(spec, 1)
    state["bn.weight"] = rng.uniform(0.5, 1.5, 3).astype(np.float32)
    state["bn.bias"] = rng.normal(size=3).astype(np.float32)
    state["bn.running_mean"] = rng.normal(size=3).astype(np.float32)
    state["bn.running_var"] = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    x = rng.normal(size=(5, 2, 6, 6)).astype(np.float32)
    b = TorchBackend("cpu", TrainOptions())
    b.build(spec, state)
    logits, caps = b.forward(x, capture=["g"])

    s = {k: v.astype(np.float64) for k, v in state.items()}
    h = _np_conv(x.astype(np.float64), s["c.weight"], s["c.bias"], 1)
    h = (h - s["bn.running_mean"][None, :, None, None]) / np.sqrt(s["bn.running_var"][None, :, None, None] + 1e-5)
    h = h * s["bn.weight"][None, :, None, None] + s["bn.bias"][None, :, None, None]
    g = np.where(h > 0, h, 0.1 * h)
    p = g.reshape(5, 3, 3, 2, 3, 2).max(axis=(3, 5))
    ref = p.reshape(5, -1) @ s["fc.weight"].T + s["fc.bias"]
    np.testing.assert_allclose(caps["g"], g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="capture point"):
        b.forward(x, capture=["nope"])


def test_channels_last_gives_the_same_logits():
    spec = create_spec("cnn", 3, 16, 10)
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    outs = []
    for cl in (False, True):
        b = TorchBackend("cpu", TrainOptions(extra={"channels_last": cl}))
        b.build(spec, init_params(spec, 0))
        outs.append(b.forward(x, train=True, dropout=False)[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_train_forward_updates_bn_running_stats():
    spec = ModelSpec("bn", (BatchNorm("bn", 2, momentum=0.1), Flatten(), Linear("fc", 2 * 4 * 4, 3)), 2, 4, 3)
    b = make(spec)
    x = np.random.default_rng(2).normal(1.0, 2.0, size=(6, 2, 4, 4)).astype(np.float32)
    b.forward(x, train=False)
    np.testing.assert_array_equal(b.state_dict()["bn.running_mean"], 0.0)  # eval leaves them alone
    b.forward(x, train=True)
    st = b.state_dict()
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3), ddof=1)  # PyTorch keeps the unbiased variance
    np.testing.assert_allclose(st["bn.running_mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["bn.running_var"], 0.9 + 0.1 * var, rtol=1e-5, atol=1e-6)


# ----- augmentation ---------------------------------------------------------------------
def _np_augment(x, order, offsets, flips, pad, mean, std):
    out = []
    for i, src in enumerate(order):
        img = np.pad(x[src], ((pad, pad), (pad, pad), (0, 0)))
        dy, dx = offsets[i]
        img = img[dy : dy + x.shape[1], dx : dx + x.shape[2]]
        if flips[i]:
            img = img[:, ::-1]
        out.append(((img / 255.0 - mean) / std).transpose(2, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("channels_last", [False, True])
def test_augmentation_matches_definition(channels_last):
    n, side, c, pad = 6, 5, 3, 2
    x = (np.arange(n * side * side * c) % 250 + 1).astype(np.uint8).reshape(n, side, side, c)  # no zeros: padding shows
    y = np.arange(n) % 4
    order = np.array([3, 0, 5, 1, 4, 2])
    offsets = np.array([[0, 0], [4, 4], [0, 4], [4, 0], [1, 3], [2, 2]])
    flips = np.array([False, True, True, False, True, False])
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    opts = TrainOptions(mean=mean, std=std, crop_pad=pad, flip=True, extra={"channels_last": channels_last})
    b = TorchBackend("cpu", opts)
    b.set_data("train", x, y)
    b.begin_epoch(order, offsets, flips, seed=0)
    got, labels = b._data.train_batch(1, 5)
    ref = _np_augment(x, order, offsets, flips, pad, np.array(mean), np.array(std))
    np.testing.assert_allclose(got.numpy(), ref[1:5], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), y[order[1:5]])
    try:
        from cifarbench.data.augment import apply_numpy
    except ImportError:
        return
    shared = apply_numpy(x, order[1:5], offsets[1:5], flips[1:5], pad, mean, std)
    np.testing.assert_allclose(got.numpy(), shared, rtol=1e-5, atol=1e-5)


def test_eval_batches_are_not_augmented():
    x = images(3, 4, 1)
    b = TorchBackend("cpu", TrainOptions(mean=(0.5,), std=(0.5,), crop_pad=2, flip=True))
    b.set_data("test", x, np.zeros(3, np.int64))
    got = b._data.eval_batch("test", 0, 3).numpy()
    np.testing.assert_allclose(got, (x.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5, rtol=1e-6, atol=1e-6)


# ----- steps ----------------------------------------------------------------------------
def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _grads(w, bias, xb, yb, eps):
    k = w.shape[0]
    p = _softmax(xb @ w.T + bias)
    target = (1 - eps) * np.eye(k)[yb] + eps / k
    g = (p - target) / len(xb)
    return g.T @ xb, g.sum(axis=0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_equal_manual_computation(nesterov):
    spec = linear_spec()
    x, y = images(8, 3, 2, seed=4), np.random.default_rng(5).integers(0, 4, 8)
    b = make(spec, label_smoothing=0.1)
    b.configure_optimizer(OptimConfig("sgd", momentum=0.9, nesterov=nesterov, weight_decay=0.01))
    b.set_data("train", x, y)
    order = np.random.default_rng(6).permutation(8)
    b.begin_epoch(order, None, None, seed=0)
    s = {k: v.astype(np.float64) for k, v in b.state_dict().items()}
    xf = x.transpose(0, 3, 1, 2).reshape(8, -1).astype(np.float64) / 255.0  # flatten is C, H, W
    bufs = {}
    for start, lr, mom in ((0, 0.1, 0.9), (4, 0.05, 0.8)):
        b.train_step(start, start + 4, lr, mom)
        idx = order[start : start + 4]
        gw, gb = _grads(s["fc.weight"], s["fc.bias"], xf[idx], y[idx], 0.1)
        for name, g in (("fc.weight", gw), ("fc.bias", gb)):
            g = g + 0.01 * s[name]
            bufs[name] = g if name not in bufs else mom * bufs[name] + g
            step = g + mom * bufs[name] if nesterov else bufs[name]
            s[name] = s[name] - lr * step
    got = b.state_dict()
    for name in ("fc.weight", "fc.bias"):
        np.testing.assert_allclose(got[name], s[name], rtol=1e-5, atol=1e-6)
    opt = b.optimizer_state()
    assert float(opt["step"]) == 2.0
    np.testing.assert_allclose(opt["fc.weight.momentum_buffer"], bufs["fc.weight"], rtol=1e-5, atol=1e-6)


def test_adamw_step_equals_manual_computation():
    spec = linear_spec()
    x, y = images(4, 3, 2, seed=7), np.array([0, 1, 2, 3])
    b = make(spec)
    b.configure_optimizer(OptimConfig("adamw", weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8))
    b.set_data("train", x, y)
    b.begin_epoch(np.arange(4), None, None, seed=0)
    s = {k: v.astype(np.float64) for k, v in b.state_dict().items()}
    b.train_step(0, 4, 0.01, 0.8)  # beta1 comes from the step's momentum
    gw, _ = _grads(s["fc.weight"], s["fc.bias"], x.transpose(0, 3, 1, 2).reshape(4, -1) / 255.0, y, 0.0)
    m, v = 0.2 * gw, 0.01 * gw**2
    ref = s["fc.weight"] * (1 - 0.01 * 0.1) - 0.01 * (m / 0.2) / (np.sqrt(v / 0.01) + 1e-8)
    np.testing.assert_allclose(b.state_dict()["fc.weight"], ref, rtol=1e-4, atol=1e-6)
    opt = b.optimizer_state()
    assert float(opt["step"]) == 1.0
    np.testing.assert_allclose(opt["fc.weight.exp_avg_sq"], v, rtol=1e-4, atol=1e-10)


def test_label_smoothing_loss_value():
    spec = linear_spec()
    x, y = images(6, 3, 2, seed=8), np.array([0, 1, 2, 3, 0, 1])
    b = make(spec, label_smoothing=0.2)
    b.configure_optimizer(OptimConfig("sgd"))
    b.set_data("train", x, y)
    b.begin_epoch(np.arange(6), None, None, seed=0)
    logits, _ = b.forward(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    b.train_step(0, 3, 0.0, 0.9)
    b.train_step(3, 6, 0.0, 0.9)
    stats = b.end_epoch()
    logp = np.log(_softmax(logits.astype(np.float64)))
    per_sample = 0.8 * -logp[np.arange(6), y] + 0.2 * -logp.mean(axis=1)
    assert stats.count == 6
    assert stats.loss_sum == pytest.approx(per_sample.sum(), rel=1e-5)
    assert stats.correct == int((logits.argmax(1) == y).sum())
    assert b.end_epoch().count == 0  # stats reset after reading


def _train(b: TorchBackend, x, y, epochs, first_epoch=0, batch=8):
    n = len(x)
    for epoch in range(first_epoch, first_epoch + epochs):
        rng = np.random.default_rng(100 + epoch)
        offsets = rng.integers(0, 2 * b.options.crop_pad + 1, (n, 2))
        b.begin_epoch(rng.permutation(n), offsets, rng.random(n) < 0.5, seed=1000 + epoch)
        for start in range(0, n, batch):
            b.train_step(start, start + batch, 0.05, 0.9)
        b.end_epoch()


def _fresh(spec, x, y, opt):
    b = make(spec, seed=0, crop_pad=2, flip=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    b.configure_optimizer(opt)
    b.set_data("train", x, y)
    return b


def test_identical_runs_are_bit_identical_and_dropout_seed_matters():
    spec = create_spec("cnn", 3, 8, 10)
    x, y = images(32, 8, 3, seed=9), np.random.default_rng(9).integers(0, 10, 32)
    runs = []
    for _ in range(2):
        b = _fresh(spec, x, y, OptimConfig("sgd", weight_decay=5e-4))
        _train(b, x, y, epochs=2)
        runs.append(b.state_dict())
    for name in runs[0]:
        assert np.array_equal(runs[0][name], runs[1][name]), name
    # the same run with another dropout seed in epoch 0 must differ
    b = _fresh(spec, x, y, OptimConfig("sgd", weight_decay=5e-4))
    rng = np.random.default_rng(100)
    b.begin_epoch(rng.permutation(32), rng.integers(0, 5, (32, 2)), rng.random(32) < 0.5, seed=7)
    for start in range(0, 32, 8):
        b.train_step(start, start + 8, 0.05, 0.9)
    assert not np.array_equal(b.state_dict()["fc2.weight"], runs[0]["fc2.weight"])


@pytest.mark.parametrize(
    "opt", [OptimConfig("sgd", nesterov=True, weight_decay=5e-4), OptimConfig("adam", weight_decay=1e-4)]
)
def test_optimizer_state_round_trip_resumes_exactly(opt):
    spec = create_spec("cnn", 3, 8, 10)
    x, y = images(16, 8, 3, seed=10), np.random.default_rng(10).integers(0, 10, 16)
    straight = _fresh(spec, x, y, opt)
    _train(straight, x, y, epochs=2)

    first = _fresh(spec, x, y, opt)
    _train(first, x, y, epochs=1)
    weights, opt_state = first.state_dict(), first.optimizer_state()
    assert float(opt_state["step"]) == 2.0
    resumed = TorchBackend("cpu", first.options, seed=0)
    resumed.build(spec, weights)
    resumed.configure_optimizer(opt)
    resumed.load_optimizer_state(opt_state)
    resumed.set_data("train", x, y)
    _train(resumed, x, y, epochs=1, first_epoch=1)
    a, b = straight.state_dict(), resumed.state_dict()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    keys = set(resumed.optimizer_state())
    wanted = {"momentum_buffer"} if opt.name == "sgd" else {"exp_avg", "exp_avg_sq"}
    assert keys == {"step"} | {f"{p}.{k}" for p in spec.param_shapes() for k in wanted}
    with pytest.raises(CheckpointError):
        resumed.load_optimizer_state({"step": np.float32(1), "fc2.weight.bogus": np.zeros(1, np.float32)})


def test_bf16_autocast_trains_and_predicts_on_cpu():
    spec = create_spec("cnn", 3, 8, 10)
    x, y = images(16, 8, 3, seed=11), np.random.default_rng(11).integers(0, 10, 16)
    preds = {}
    for precision in ("fp32", "bf16"):
        b = make(spec, precision=precision)
        b.set_data("test", x, y)
        preds[precision] = b.predict("test", batch_size=5)
    assert preds["bf16"].dtype == np.float32 and preds["bf16"].shape == (16, 10)
    assert not np.array_equal(preds["bf16"], preds["fp32"])  # bf16 really ran
    np.testing.assert_allclose(preds["bf16"], preds["fp32"], atol=0.05 * np.abs(preds["fp32"]).max())
    b.configure_optimizer(OptimConfig("sgd"))
    b.set_data("train", x, y)
    _train(b, x, y, epochs=1)
    assert all(np.isfinite(v).all() for v in b.state_dict().values())


def test_device_and_precision_errors():
    with pytest.raises(UsageError, match="fp16"):
        TorchBackend("cpu", TrainOptions(precision="fp16"))
    with pytest.raises(UsageError, match="device"):
        TorchBackend("tpu", TrainOptions())
    probe = TorchBackend.probe()
    assert set(probe) == {"cuda", "mps", "cpu"} and probe["cpu"] is None
    if probe["cuda"] is not None:
        with pytest.raises(BackendUnavailable, match="cuda"):
            TorchBackend("cuda", TrainOptions())
    b = make(linear_spec())
    assert b.describe().startswith(f"torch {torch.__version__.split('+')[0]} cpu (")
    with pytest.raises(UsageError, match="set_data"):
        b.predict("test", 4)


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """extra={"compile": True}: inductor needs a C++ compiler and ~1 min to build on 2 cores."""
    spec = ModelSpec("bnlin", (BatchNorm("bn", 2), Flatten(), Linear("fc", 2 * 3 * 3, 4)), 2, 3, 4)
    x, y = images(8, 3, 2, seed=12), np.random.default_rng(12).integers(0, 4, 8)
    weights = []
    for compile_ in (False, True):
        b = make(spec, crop_pad=1, flip=True, extra={"compile": compile_})
        b.configure_optimizer(OptimConfig("sgd"))
        b.set_data("train", x, y)
        b.set_data("test", x, y)
        _train(b, x, y, epochs=1, batch=4)
        weights.append((b.state_dict(), b.predict("test", 4)))
    for name in weights[0][0]:
        np.testing.assert_allclose(weights[1][0][name], weights[0][0][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights[1][1], weights[0][1], rtol=1e-5, atol=1e-5)


def test_use_cpu_env_forces_the_cpu_device(monkeypatch):
    """mike7seven's users set USE_CPU=1 to force the CPU; an explicit --device still wins."""
    from cifarbench.backends.base import Backend

    class Two(Backend):
        name, devices = "two", ("gpu", "cpu")

        @classmethod
        def probe(cls):
            return {"gpu": None, "cpu": None}

    monkeypatch.delenv("USE_CPU", raising=False)
    assert Two.auto_device() == "gpu"
    for value in ("1", "true", "YES"):
        monkeypatch.setenv("USE_CPU", value)
        assert Two.auto_device() == "cpu"
    monkeypatch.setenv("USE_CPU", "0")
    assert Two.auto_device() == "gpu"
