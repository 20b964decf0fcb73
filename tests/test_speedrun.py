"""The speedrun model and its pieces: new spec primitives on every backend, frozen tensors,
patch whitening, dirac init, BN-bias lr groups, lookahead, alternating flips, TTA, the
triangle schedule, and a smoke run of the recipe on each backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.backends.numpy_backend import layers, loss
from cifarbench.backends.numpy_backend.backend import NumpyBackend
from cifarbench.backends.numpy_backend.network import Net
from cifarbench.config import build_config
from cifarbench.data.augment import alternate_flips, normalize
from cifarbench.engine import tta
from cifarbench.engine.schedules import make_schedule
from cifarbench.engine.tricks import bn_bias_scales, lookahead_decay
from cifarbench.engine.whiten import data_init, dirac, patch_moment, whitening_filters
from cifarbench.models import create_spec, init_params
from cifarbench.models import spec as S
from cifarbench.models.shapes import output_shape

from gradcheck import numgrad


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-12))


# ----- the model ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant,trainable", [((3, 32, 10), 1_971_352), ((1, 28, 10), 1_962_120), ((3, 32, 100), 1_994_392)])
def test_parameter_counts(variant, trainable):
    spec = create_spec("speedrun", *variant)
    c = variant[0]
    assert output_shape(spec, 2) == (2, variant[2])
    assert spec.num_params() == trainable
    # frozen: the whitening filters (8c x c x 2 x 2) and the six BN scales (64+64+256*4)
    assert spec.frozen_names() == {"whiten.conv.weight"} | {f"block{b}.bn{i}.weight" for b in (1, 2, 3) for i in (1, 2)}
    buffers = spec.buffer_shapes()
    assert buffers["whiten.conv.weight"] == (8 * c, c, 2, 2)
    assert sum(int(np.prod(buffers[k])) for k in spec.frozen_names()) == 32 * c * c + 1152
    assert not spec.frozen_names() & set(spec.param_shapes())


# ----- new primitives: float64 gradient checks of the NumPy engine -----------------------------


def test_gelu_matches_erf_form_and_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, 2)) * 2
    from math import erf

    y, cache = layers.gelu_forward(x)
    ref = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))(x)
    try:  # with SciPy the erf is exact; without it (CI), the fallback's |error| < 1.2e-7
        import scipy.special  # noqa: F401

        bound = np.full(x.shape, 1e-12)
    except ImportError:
        bound = 0.5 * np.abs(x) * 1.2e-7 + 1e-12
    assert np.all(np.abs(y - ref) <= bound)
    g = rng.standard_normal(x.shape)
    dx = layers.gelu_backward(g, cache)
    assert rel(dx, numgrad(lambda: float((layers.gelu_forward(x)[0] * g).sum()), x)) < 1e-7


def test_gelu_fallback_erf_is_accurate(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *a, **k):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    x = np.linspace(-6, 6, 1001)
    exact = layers.erf(x)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert np.abs(layers.erf(x) - exact).max() < 2e-7


def _tiny_spec():
    return S.ModelSpec("t", (
        S.Conv("c1", 2, 8, 2, trainable_weight=False),
        S.GELU(),
        S.Conv("c2", 8, 4, 3, pad=1, bias=False),
        S.MaxPool(2, 2),
        S.BatchNorm("b2", 4, eps=1e-12, momentum=0.4, trainable_weight=False),
        S.GELU(),
        S.MaxPool(2, 2),
        S.Flatten(),
        S.Linear("fc", 4, 3, bias=False),
        S.Scale(1 / 9),
    ), 2, 5, 3)


def test_network_gradients_with_frozen_weights():
    spec = _tiny_spec()
    rng = np.random.default_rng(1)
    net = Net(spec, np, np.float64)
    for k, shape in {**spec.param_shapes(), **spec.buffer_shapes()}.items():
        internal = (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape
        store = net.params if k in spec.param_shapes() else net.buffers
        store[k] = rng.standard_normal(internal) + (1.5 if k == "b2.weight" else 0.0)
    net.buffers["b2.running_var"] = np.abs(net.buffers["b2.running_var"])
    x = rng.standard_normal((3, 5, 5, 2))
    y = np.array([0, 2, 1])

    def f():
        return float(loss.cross_entropy(net.forward(x, train=True), y, 0.2)[0].mean())

    _, dz, _ = loss.cross_entropy(net.forward(x, train=True), y, 0.2)
    net.backward(dz)
    assert set(net.grads) == set(spec.param_shapes())  # nothing for the frozen tensors
    for name in spec.param_shapes():
        assert rel(net.grads[name], numgrad(f, net.params[name])) < 1e-5, name


# ----- frozen tensors, lr groups and lookahead across backends ------------------------------

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _pair(spec, state):
    torch_backend = pytest.importorskip("cifarbench.backends.torch_backend.backend")
    opts = TrainOptions(mean=MEAN, std=STD, label_smoothing=0.2)
    out = [NumpyBackend("cpu", opts), torch_backend.TorchBackend("cpu", opts)]
    for b in out:
        b.build(spec, state)
    return out


def test_frozen_tensors_and_bn_bias_groups_match_torch():
    spec = create_spec("speedrun", 3, 16, 10)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 8)
    state = data_init(spec, init_params(spec, 0), x, MEAN, STD)
    scales = bn_bias_scales(spec, 64.0)
    assert len(scales) == 6 and all(n.endswith(".bias") and f == 64.0 and w == 1 / 64 for n, f, w in scales)
    opt = OptimConfig("sgd", momentum=0.85, nesterov=True, weight_decay=5e-3, scales=scales)
    backends = _pair(spec, state)
    for b in backends:
        b.configure_optimizer(opt)
        b.set_data("train", x, y)
        b.begin_epoch(np.arange(8), None, None, seed=0)
        for i in range(2):
            b.train_step(4 * i, 4 * i + 4, lr=0.05, momentum=0.85)
    (sn, st), (on, ot) = [b.state_dict() for b in backends], [b.optimizer_state() for b in backends]
    for k in spec.frozen_names():
        np.testing.assert_array_equal(sn[k], state[k])
        np.testing.assert_array_equal(st[k], state[k])
    for k in spec.param_shapes():
        assert rel(sn[k], st[k]) < 1e-4, k
    assert set(on) == set(ot) == {f"{k}.momentum_buffer" for k in spec.param_shapes()} | {"step"}
    # the BN bias really moved with 64x the lr: compare with a run without the groups
    plain = _pair(spec, state)[0]
    plain.configure_optimizer(dataclasses.replace(opt, scales=()))
    plain.set_data("train", x, y)
    plain.begin_epoch(np.arange(8), None, None, seed=0)
    plain.train_step(0, 4, lr=0.05, momentum=0.85)
    grouped = _pair(spec, state)[0]
    grouped.configure_optimizer(opt)
    grouped.set_data("train", x, y)
    grouped.begin_epoch(np.arange(8), None, None, seed=0)
    grouped.train_step(0, 4, lr=0.05, momentum=0.85)
    k = "block1.bn1.bias"
    moved_plain = plain.state_dict()[k] - state[k]
    moved_grouped = grouped.state_dict()[k] - state[k]
    assert rel(moved_grouped, 64 * moved_plain) < 1e-3


def test_lookahead_default_and_torch_agree():
    spec = create_spec("speedrun", 3, 16, 10)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 8)
    state = init_params(spec, 0)
    backends = _pair(spec, state)
    for b in backends:
        b.configure_optimizer(OptimConfig("sgd", momentum=0.9))
        b.set_data("train", x, y)
        b.begin_epoch(np.arange(8), None, None, seed=0)
        b.lookahead(None)
        b.train_step(0, 4, 0.05, 0.9)
        # copies: torch's CPU state_dict() hands out views of the live tensors
        fast = {k: v.copy() for k, v in b.state_dict().items()}
        b.lookahead(0.75)  # slow = 0.75 * start + 0.25 * fast, and the model continues from it
        now = {k: v.copy() for k, v in b.state_dict().items()}
        for k in ("block1.conv1.weight", "head.weight", "block2.bn1.running_mean"):
            np.testing.assert_allclose(now[k], 0.75 * state[k] + 0.25 * fast[k], rtol=1e-5, atol=1e-6)
        b.train_step(4, 8, 0.05, 0.9)
        b.lookahead(1.0)  # the end of a run: the slow weights come back
        for k, v in now.items():
            np.testing.assert_array_equal(b.state_dict()[k], v)


def test_lookahead_cadence():
    assert lookahead_decay(4, 100, 5, 0.5) is None
    assert lookahead_decay(5, 100, 5, 0.5) == pytest.approx(0.5 * 0.05**3)
    assert lookahead_decay(100, 100, 5, 0.5) == 1.0
    assert lookahead_decay(5, 100, 0, 0.5) is None


# ----- data-dependent init -------------------------------------------------------------------


def test_whitened_patches_have_identity_second_moment():
    rng = np.random.default_rng(0)
    # correlated pixels: a smooth image plus a little noise, very unlike white noise
    base = rng.normal(0, 1, (64, 3, 9, 9)).cumsum(axis=2).cumsum(axis=3)
    x = (base + 0.1 * rng.normal(0, 1, base.shape)).astype(np.float32)
    w = whitening_filters([x[:32], x[32:]], 3, 2, eps=1e-12)
    assert w.shape == (24, 3, 2, 2)
    np.testing.assert_array_equal(w[12:], -w[:12])
    s, m = patch_moment(x, 2)
    flat = w[:12].reshape(12, -1).astype(np.float64)
    white = flat @ (s / m) @ flat.T
    assert np.abs(white - np.eye(12)).max() < 1e-3
    raw = s / m  # before: far from the identity
    assert np.abs(raw / np.sqrt(np.outer(np.diag(raw), np.diag(raw))) - np.eye(12)).max() > 0.5


def test_data_init_sets_whitening_and_dirac():
    spec = create_spec("speedrun", 3, 32, 10)
    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    state = init_params(spec, 0)
    out = data_init(spec, state, x, MEAN, STD)
    filters = whitening_filters([normalize(x, MEAN, STD)], 3, 2)
    np.testing.assert_allclose(out["whiten.conv.weight"], filters, rtol=1e-6)
    w = out["block1.conv1.weight"]  # 24 -> 64: the first 24 filters are the identity
    assert np.array_equal(w[:24, :, 1, 1], np.eye(24)) and not w[:24].sum(axis=(2, 3))[~np.eye(24, dtype=bool)].any()
    np.testing.assert_array_equal(w[24:], state["block1.conv1.weight"][24:])
    assert np.array_equal(dirac(np.ones((2, 4, 3, 3)))[:, :, 1, 1], np.eye(2, 4))
    assert data_init(create_spec("cnn"), state, x, MEAN, STD) is state  # nothing asked: untouched


# ----- augmentation, TTA, schedule -----------------------------------------------------------


def test_alternating_flips():
    n = 1000
    order0, order1 = np.random.default_rng(1).permutation(n), np.random.default_rng(2).permutation(n)
    f0, f1, f2 = (alternate_flips(7, o, e, n) for o, e in ((order0, 0), (order1, 1), (order0, 2)))
    per_image0 = np.empty(n, bool)
    per_image0[order0] = f0
    per_image1 = np.empty(n, bool)
    per_image1[order1] = f1
    assert np.array_equal(per_image1, ~per_image0)  # each image flips opposite to the epoch before
    assert np.array_equal(f2, f0)
    assert 0.4 < f0.mean() < 0.6
    assert not np.array_equal(alternate_flips(8, order0, 0, n), f0)


def test_tta_views_and_average():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
    v = {s: (w, im) for s, w, im in tta.views(x, 2)}
    assert sum(w for w, _ in v.values()) == pytest.approx(1.0) and len(v) == 6
    np.testing.assert_array_equal(v["flip"][1], x[:, :, ::-1])
    # down-right by one pixel, the border reflected
    np.testing.assert_array_equal(v["shift+"][1][:, 1:, 1:], x[:, :-1, :-1])
    np.testing.assert_array_equal(v["shift+"][1][:, 0, 1:], x[:, 1, :-1])
    np.testing.assert_array_equal(v["shift-"][1][:, :-1, :-1], x[:, 1:, 1:])
    np.testing.assert_array_equal(v["shift-flip"][1], v["shift-"][1][:, :, ::-1])

    class Fake:
        data = {}

        def set_data(self, split, xs, ys):
            self.data[split] = xs

        def predict(self, split, batch_size):
            xs = x if split == "test" else self.data[split]
            return xs.reshape(len(xs), -1)[:, :3].astype(np.float32)

    fake = Fake()
    plan = tta.upload(fake, "test", x, np.zeros(2), 1)
    assert plan == [("test", 0.5), ("test@flip", 0.5)]
    np.testing.assert_allclose(tta.predict(fake, plan, 10), 0.5 * (fake.predict("test", 1) + fake.predict("test@flip", 1)))
    assert tta.upload(fake, "test", x, np.zeros(2), 0) == [("test", 1.0)]


def test_triangle_schedule():
    cfg = build_config("speedrun", {"epochs": 10})
    sched = make_schedule(cfg, 10)  # 100 steps, peak at step 23
    lrs = [sched(s)[0] for s in range(101)]
    assert lrs[0] == pytest.approx(0.2 * 1.5) and lrs[23] == pytest.approx(1.5) and lrs[100] == pytest.approx(0.07 * 1.5)
    assert lrs[10] == pytest.approx(1.5 * (0.2 + 0.8 * 10 / 23))
    assert all(a < b for a, b in zip(lrs[:23], lrs[1:24])) and all(a > b for a, b in zip(lrs[23:100], lrs[24:]))
    assert {sched(s)[1] for s in range(100)} == {0.85}


# ----- the recipe end to end, small ----------------------------------------------------------


# MLX on CPU JIT-compiles each new kernel (GELU, erf, the predict graphs of the 2 TTA views):
# ~3 minutes on a loaded 2-core box, so it runs with the slow tests only.
@pytest.mark.parametrize("backend", ["torch", "numpy", pytest.param("mlx", marks=pytest.mark.slow)])
def test_speedrun_recipe_smoke(tmp_path, backend):
    if backend != "numpy":
        pytest.importorskip(backend)
    from conftest import write_npz

    from cifarbench.engine.trainer import Trainer

    path = write_npz(tmp_path / "d.npz", n_train=128, n_test=40, size=16)
    cfg = build_config("speedrun", {
        "dataset": f"npz:{path}", "backend": backend, "device": "cpu", "epochs": 3, "batch_size": 32,
        "eval_batch_size": 64, "lr": 0.3, "lookahead_every": 2, "compile": False, "tta": 1,
    })
    summary = Trainer(cfg, run_dir=tmp_path / "run").run()
    assert summary.test_accuracy > 0.5  # 4 well-separated colour classes
    assert (tmp_path / "run" / "model.safetensors").is_file()
