"""Muon (issue 21): the optimizer on every backend against a float64 NumPy referee, its singular
values, its param groups, the whitening-bias freeze, checkpoints and the speedrun-muon recipe.

Tolerances come from tests/parity_reference.py: ``ns_tolerance`` (float32 eps x the operation count
of each Newton-Schulz step, grown by the iteration's Lipschitz bound) and, for whole training steps,
the float32 gradient's own error measured as torch float32's distance to float64 x FLOAT32_SPREAD.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.backends.muon import muon_params, newton_schulz
from cifarbench.config import build_config
from cifarbench.engine.schedules import make_schedule
from cifarbench.engine.session import optim_config
from cifarbench.models import create_spec, init_params

from parity_reference import (FLOAT32_SPREAD, muon_reference, no_dropout, ns_lipschitz, ns_reference, ns_scalar,
                              ns_tolerance, rel, sgd_reference)

EPS32 = float(np.finfo(np.float32).eps)
BACKENDS = ["torch", "numpy", "jax", "mlx"]


def _need(backend: str) -> None:
    if backend in ("torch", "jax", "mlx"):
        pytest.importorskip({"torch": "torch", "jax": "jax", "mlx": "mlx.core"}[backend])


# ----- the referee itself ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 40), (40, 12), (16, 16)])
def test_reference_is_the_scalar_map_on_singular_values(shape):
    """NS(G) = U f(S / ||G||) V^T: singular vectors kept, each singular value through the quintic."""
    g = np.random.default_rng(0).standard_normal(shape)
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    want = u @ np.diag(ns_scalar(s / (np.linalg.norm(g) + 1e-7))) @ vt
    assert rel(ns_reference(g), want) < 1e-12


def test_published_band():
    """Three steps take every normalised singular value in [0.0127, 1] into [0.5, 1.21]; a Gaussian
    gradient of each speedrun filter shape (32 px) has all of its singular values there."""
    s = np.linspace(0.0127, 1.0, 10_001)
    out = ns_scalar(s)
    assert out.min() >= 0.5 and out.max() <= 1.21
    assert ns_scalar(np.array([0.012]))[0] < 0.5  # the threshold is tight
    spec = create_spec("speedrun", 3, 32, 10)
    rng = np.random.default_rng(1)
    shapes = {spec.param_shapes()[k] for k in muon_params(spec.param_shapes())}
    assert len(shapes) == 4
    for shape in shapes:
        sv = np.linalg.svd(ns_reference(rng.standard_normal((shape[0], int(np.prod(shape[1:]))))), compute_uv=False)
        assert 0.5 <= sv.min() and sv.max() <= 1.5, shape


# ----- one optimizer step of each backend, from identical inputs ------------------------------------

FILTERS = {"a.weight": (16, 3, 3, 3), "b.weight": (64, 16, 3, 3), "tall.weight": (40, 2, 1, 1)}
OTHERS = {"a.bias": (16,), "head.weight": (10, 64), "ramped.bias": (16,), "frozen.bias": (16,)}
LR, MOM, MU, WD, TAKEN = 0.3, 0.85, 0.6, 5e-4, 2
OPT = OptimConfig("muon", MOM, True, WD, scales=(("a.weight", 0.8, 0.0), ("head.weight", 2.0, 0.5)),
                  frozen_after=(("ramped.bias", 4), ("frozen.bias", 2)), muon_momentum=MU)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {**FILTERS, **OTHERS}
    f32 = lambda s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return ({k: f32(s) for k, s in shapes.items()}, {k: f32(s) for k, s in shapes.items()},
            {k: f32(s) for k, s in shapes.items()})


def _ohwi(a):
    """A fresh copy (the backends update in place), OHWI for filters."""
    return np.array(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a, order="C", copy=True)


def _oihw(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)) if np.ndim(a) == 4 else np.asarray(a)


def _step(backend: str, params, grads, bufs, taken: int, opt: OptimConfig = OPT):
    """(new params, new buffers), canonical layout, from one optimizer step of ``backend``'s own code."""
    if backend == "torch":
        import torch

        from cifarbench.backends.torch_backend.optim import import_state, make_optimizer, set_hyper

        names = list(params)
        ts = {k: torch.tensor(v) for k, v in params.items()}
        optimizer = make_optimizer([ts[k] for k in names], opt, torch.device("cpu"), names=names)
        import_state(optimizer, "muon", ts, {f"{k}.momentum_buffer": v for k, v in bufs.items()}, taken)
        for k in names:
            ts[k].grad = torch.tensor(grads[k])
        set_hyper(optimizer, "muon", LR, MOM, taken)
        optimizer.step()
        return ({k: t.numpy() for k, t in ts.items()},
                {k: optimizer.state[ts[k]]["momentum_buffer"].numpy() for k in names})
    to = {k: _ohwi(v) for k, v in params.items()}
    gs = {k: _ohwi(v) for k, v in grads.items()}
    bs = {k: _ohwi(v) for k, v in bufs.items()}
    if backend == "numpy":
        from cifarbench.backends.numpy_backend.optim import Grouped

        o = Grouped(opt, muon_params({k: v.shape for k, v in to.items()}))
        o.state = {f"{k}.momentum_buffer": v.copy() for k, v in bs.items()}
        o.step_count = taken
        o.step(to, gs, LR, MOM)
        new, nb = to, {k: o.state[f"{k}.momentum_buffer"] for k in to}
    elif backend == "jax":
        import jax.numpy as jnp

        from cifarbench.backends.jax_backend.backend import _optimizer_update

        new, slots = _optimizer_update(opt, {k: jnp.asarray(v) for k, v in to.items()},
                                       {k: jnp.asarray(v) for k, v in gs.items()},
                                       {"momentum_buffer": {k: jnp.asarray(v) for k, v in bs.items()}},
                                       jnp.float32(taken + 1), jnp.float32(LR), jnp.float32(MOM))
        nb = slots["momentum_buffer"]
    else:
        import mlx.core as mx

        from cifarbench.backends.mlx_backend import optim

        mp = {k: mx.array(v) for k, v in to.items()}
        state = optim.init_state(opt, mp)
        state["momentum_buffer"] = {k: mx.array(v) for k, v in bs.items()}
        state.update(lr=mx.array(LR), momentum=mx.array(MOM), step=mx.array(float(taken)))
        new = optim.apply(opt, mp, {k: mx.array(v) for k, v in gs.items()}, state)
        nb = state["momentum_buffer"]
    return ({k: _oihw(np.array(v, np.float32)) for k, v in new.items()},
            {k: _oihw(np.array(v, np.float32)) for k, v in nb.items()})


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_matches_float64(backend):
    _need(backend)
    params, grads, bufs = _inputs()
    new, nb = _step(backend, params, grads, bufs, TAKEN)
    for k, shape in FILTERS.items():
        f_lr = OPT.scale_of(k)[0]
        ref, ref_buf = muon_reference(params[k], grads[k], bufs[k], LR * f_lr, MU)
        assert rel(nb[k], ref_buf) < 4 * EPS32, k  # mu * buf + g: two roundings
        rows, cols = shape[0], int(np.prod(shape[1:]))
        renormed = params[k] * np.sqrt(rows) / np.linalg.norm(params[k].astype(np.float64))
        ortho = ns_reference((grads[k] + MU * ref_buf).reshape(rows, -1))
        # the update itself, measured against float64: ours = renormed - lr * NS(u)
        ours_update = (renormed.astype(np.float64) - new[k].astype(np.float64)).reshape(rows, -1) / (LR * f_lr)
        tol = ns_tolerance(rows, cols)
        # the renormalised filter's own rounding (a norm and a product, ~log2(n) + 3 roundings) seen
        # through the division by lr
        tol_renorm = (np.log2(rows * cols) + 3) * EPS32 * np.linalg.norm(renormed) / (LR * f_lr * np.linalg.norm(ortho))
        err = rel(ours_update, ortho)
        print(f"{backend} {k} {rows}x{cols}: update rel to float64 {err:.1e} (tolerance {tol + tol_renorm:.1e})")
        assert err < tol + tol_renorm, k
        assert rel(new[k], ref) < (tol * LR * f_lr * np.linalg.norm(ortho) + 8 * EPS32 * np.linalg.norm(renormed)) / np.linalg.norm(ref)
        # singular values: the scalar map of the input's (the published band for these Gaussian gradients)
        u = (grads[k] + MU * ref_buf).reshape(rows, -1).astype(np.float64)
        want = np.sort(ns_scalar(np.linalg.svd(u / np.linalg.norm(u), compute_uv=False)))
        got = np.sort(np.linalg.svd(ours_update, compute_uv=False))
        assert np.abs(got - want).max() < (tol + tol_renorm) * np.linalg.norm(ortho), k
        assert 0.5 <= got.min() and got.max() <= 1.5, k
    for k in OTHERS:
        f_lr, f_wd = OPT.scale_of(k)
        n = OPT.ramp_of(k)
        r = max(0.0, 1 - TAKEN / n) if n else 1.0
        ref, ref_buf = sgd_reference(params[k], grads[k], bufs[k], LR * f_lr * r, MOM, WD * f_wd)
        assert rel(nb[k], ref_buf) < 8 * EPS32, k
        assert rel(new[k], ref) < 16 * EPS32, k
    assert np.array_equal(new["frozen.bias"], params["frozen.bias"])  # N = 2 steps taken: frozen
    assert not np.array_equal(new["ramped.bias"], params["ramped.bias"])


def test_bounds_are_what_they_say():
    """The Lipschitz bound holds for real perturbations (float64), so the tolerance is a bound."""
    rng = np.random.default_rng(2)
    g = rng.standard_normal((64, 144))
    base = ns_reference(g)
    bound = ns_lipschitz(1.21)
    for _ in range(4):
        d = rng.standard_normal(g.shape) * 1e-7 * np.linalg.norm(g) / np.sqrt(g.size)
        growth = np.linalg.norm(ns_reference(g + d) - base) / (np.linalg.norm(d) / np.linalg.norm(g))
        assert growth < bound


# ----- one training step of each backend, through the contract ----------------------------------


SIZE, BATCH = 16, 8
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _speedrun_small():
    spec = create_spec("speedrun", 3, SIZE, 4)
    spec = dataclasses.replace(spec, layers=no_dropout(spec.layers))
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    y = rng.integers(0, 4, BATCH).astype(np.int64)
    from cifarbench.engine.whiten import data_init

    state = data_init(spec, init_params(spec, 0), x, MEAN, STD)
    cfg = build_config("speedrun-muon", {"lr": 0.1, "batch_size": BATCH})
    return spec, state, x, y, optim_config(cfg, spec, BATCH * 3)


def _mini():
    """A small net with speedrun's parts (frozen whitening conv with a trainable bias, bias-free convs,
    frozen-scale BN, a bias-free head): quick on every backend."""
    from cifarbench.engine.whiten import data_init
    from cifarbench.models import spec as S

    layers = (S.Group("whiten", (S.Conv("whiten.conv", 3, 24, 2, bias=True, trainable_weight=False, init="whiten"),
                                 S.GELU())),
              S.Conv("c1", 24, 8, 3, pad=1, bias=False, init="dirac"), S.MaxPool(3, 3),
              S.BatchNorm("bn1", 8, eps=1e-12, momentum=0.4, trainable_weight=False), S.GELU(),
              S.Conv("c2", 8, 16, 3, pad=1, bias=False), S.MaxPool(2, 2), S.Flatten(), S.Linear("head", 16, 4, bias=False))
    spec = S.ModelSpec("mini", layers, 3, 8, 4)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 4, BATCH).astype(np.int64)
    return spec, data_init(spec, init_params(spec, 0), x, MEAN, STD), x, y


def _backend(name, spec, state, opt, x, y, opt_state=None):
    from cifarbench.backends import create_backend

    be = create_backend(name, "cpu", TrainOptions(mean=MEAN, std=STD, label_smoothing=0.2, extra={"compile": False}))
    be.build(spec, state)
    be.configure_optimizer(opt)
    if opt_state is not None:
        be.load_optimizer_state(opt_state)
    be.set_data("train", x, y)
    be.begin_epoch(np.arange(BATCH), None, None, seed=0)
    return be


def _reference_grads(spec, state, x, dtype):
    import torch

    from parity_reference import torch_forward
    from cifarbench.backends.numpy_backend.augment import normalise

    bits = normalise(x, np.array(MEAN, np.float32), np.array(STD, np.float32), np.float32).transpose(0, 3, 1, 2)
    names = list(spec.param_shapes())
    t = {k: torch.tensor(np.asarray(v, np.float64), dtype=dtype, requires_grad=k in names) for k, v in state.items()}
    logits = torch_forward(spec, t, torch.tensor(np.asarray(bits, np.float64), dtype=dtype), train=True)
    return logits, t, names


def _grads(spec, state, x, y, dtype):
    import torch

    logits, t, names = _reference_grads(spec, state, x, dtype)
    torch.nn.functional.cross_entropy(logits, torch.tensor(y), label_smoothing=0.2).backward()
    return {k: t[k].grad.detach().numpy().astype(np.float64) for k in names}


@pytest.mark.parametrize("backend", ["torch", "numpy", "jax", pytest.param("mlx", marks=pytest.mark.slow)])
def test_training_step_matches_float64(backend):
    """One train_step (forward, backward, Muon + SGD groups) from the recipe's OptimConfig, against
    float64 torch gradients put through the float64 referee. A filter's tolerance: ns_tolerance with
    the float32 gradient's error (torch float32's distance to float64 x FLOAT32_SPREAD) as input error."""
    _need(backend)
    pytest.importorskip("torch")
    spec, state, x, y, opt = _speedrun_small()
    lr = 0.1
    be = _backend(backend, spec, state, opt, x, y)
    be.train_step(0, BATCH, lr, opt.momentum)
    new, st = be.state_dict(), be.optimizer_state()
    import torch

    g64, g32 = _grads(spec, state, x, y, torch.float64), _grads(spec, state, x, y, torch.float32)
    filters = set(muon_params(spec.param_shapes()))
    assert filters == {f"block{b}.conv{i}.weight" for b in (1, 2, 3) for i in (1, 2)}
    for k in spec.param_shapes():
        f_lr, f_wd = opt.scale_of(k)
        if k in filters:
            p = state[k].astype(np.float64)
            want, _ = muon_reference(p, g64[k], np.zeros_like(p), lr * f_lr, opt.muon_momentum)
            rows, cols = p.shape[0], int(np.prod(p.shape[1:]))
            grad_err = FLOAT32_SPREAD * rel(g32[k], g64[k])
            u = (g64[k] * (1 + opt.muon_momentum)).reshape(rows, -1)
            ortho = np.linalg.norm(ns_reference(u))
            tol = (ns_tolerance(rows, cols, grad_rel=grad_err) * lr * f_lr * ortho
                   + 8 * EPS32 * np.sqrt(rows)) / np.linalg.norm(want)
            err = rel(new[k], want)
            print(f"{backend} {k}: rel to float64 {err:.1e} (tolerance {tol:.1e}, gradient float32 error {grad_err:.1e})")
            assert err < tol, k
        else:
            r = max(0.0, 1 - 0 / opt.ramp_of(k)) if opt.ramp_of(k) else 1.0
            want, buf = sgd_reference(state[k], g64[k], None, lr * f_lr * r, opt.momentum, opt.weight_decay * f_wd,
                                      first=True)
            scale = np.linalg.norm(want)
            step = lr * f_lr * np.linalg.norm(g64[k])
            tol = 4 * FLOAT32_SPREAD * rel(g32[k], g64[k]) * step / max(scale, 1e-30) + 16 * EPS32
            assert rel(new[k], want) < max(tol, 1e-4), k
        assert f"{k}.momentum_buffer" in st
    assert float(st["step"]) == 1.0


# ----- checkpoints: round trip, resume = continue, every backend loads every other's state -----------


def test_resume_is_continue_and_backends_cross_load(tmp_path):
    pytest.importorskip("torch")
    from cifarbench import checkpoint as ckpt

    spec, state, x, y = _mini()
    opt = optim_config(build_config("speedrun-muon", {"lr": 0.1, "batch_size": BATCH}), spec, BATCH)
    assert {k for k, *_ in opt.scales if opt.scale_of(k)[1] == 0.0} == {"c1.weight", "c2.weight"}
    a = _backend("torch", spec, state, opt, x, y)
    for _ in range(2):
        a.train_step(0, BATCH, 0.1, opt.momentum)
    meta = ckpt.model_metadata("mini", "synthetic", 4, 3, 8, [f"c{i}" for i in range(4)], MEAN, STD, "torch")
    ckpt.save_checkpoint(tmp_path, a.state_dict(), meta, a.optimizer_state(), {"epoch": 0})
    saved_opt = ckpt.load_optimizer_state(tmp_path)
    assert set(saved_opt) == {f"{k}.momentum_buffer" for k in spec.param_shapes()} | {"step"}
    assert float(saved_opt["step"]) == 2.0
    a.train_step(0, BATCH, 0.1, opt.momentum)  # continued
    b = _backend("torch", spec, ckpt.load_checkpoint(tmp_path).state, opt, x, y, saved_opt)
    b.train_step(0, BATCH, 0.1, opt.momentum)  # resumed
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k]), k  # the same bits: buffers and step count round-trip
    # every backend loads torch's state, and its state read back is the very same arrays
    loaded = ckpt.load_checkpoint(tmp_path).state
    for name in ("numpy", "jax", "mlx"):
        try:
            _need(name)
        except pytest.skip.Exception:
            continue
        other = _backend(name, spec, loaded, opt, x, y, saved_opt)
        back = other.optimizer_state()
        for k, v in saved_opt.items():
            assert np.array_equal(back[k], v), (name, k)


# ----- the whitening-bias freeze, the recipe, the schedule -----------------------------------------


@pytest.mark.parametrize("recipe", ["speedrun", "speedrun-muon"])
def test_whitening_bias_decays_then_freezes(recipe):
    """frozen_after: N = 3 epochs of steps; the bias moves while t < N with lr x (1 - t/N), then never."""
    spec, state, x, y = _mini()
    cfg = build_config(recipe, {"batch_size": 4, "lr": 0.05})
    opt = optim_config(cfg, spec, 8)  # 2 steps per epoch: frozen after 6
    assert opt.frozen_after == (("whiten.conv.bias", 6),)
    be = _backend("numpy", spec, state, opt, x, y)
    moved = []
    for i in range(8):
        before = be.state_dict()["whiten.conv.bias"]
        be.begin_epoch(np.arange(BATCH), None, None, seed=i)
        be.train_step(0, 4, 0.05, opt.momentum)
        moved.append(not np.array_equal(before, be.state_dict()["whiten.conv.bias"]))
    assert moved == [True] * 6 + [False] * 2


def test_recipe_groups():
    cfg = build_config("speedrun-muon")
    assert (cfg.opt, cfg.batch_size, cfg.epochs, cfg.sched, cfg.label_smoothing, cfg.crop_pad, cfg.flip_mode, cfg.tta) == (
        "muon", 2000, 8, "linear", 0.2, 2, "alternate", 2)
    assert (cfg.muon_lr, cfg.muon_momentum, cfg.momentum, cfg.nesterov, cfg.whiten_bias_epochs) == (0.24, 0.6, 0.85, True, 3)
    spec = create_spec(cfg.model, 3, 32, 10)
    opt = optim_config(cfg, spec, 50_000)
    assert opt.name == "muon" and opt.frozen_after == (("whiten.conv.bias", 75),)  # 3 epochs x 25 steps
    # per-step lrs (mean loss) = the record's (summed loss) x batch 2000; Muon's as published
    assert cfg.lr == pytest.approx(0.053 * 2000)
    assert cfg.lr * opt.scale_of("head.weight")[0] == pytest.approx(0.67 * 2000, rel=1e-6)
    assert cfg.lr * opt.scale_of("block2.conv1.weight")[0] == pytest.approx(0.24)
    assert opt.scale_of("block2.conv1.weight")[1] == 0.0
    # decay per step lr * coefficient = 2e-6 x batch for every SGD group
    for k in ("block1.bn1.bias", "whiten.conv.bias", "head.weight"):
        f_lr, f_wd = opt.scale_of(k)
        assert cfg.lr * f_lr * cfg.weight_decay * f_wd == pytest.approx(2e-6 * 2000, rel=1e-4), k
    # BN: the papers' momentum 0.6 (torch's 0.4), eps 1e-12, on every BN of the net
    from cifarbench.models.spec import BatchNorm, iter_layers

    bns = [l for l in iter_layers(spec.layers) if isinstance(l, BatchNorm)]
    assert bns and all((l.momentum, l.eps) == (0.4, 1e-12) for l in bns)


def test_speedrun_muon_net_is_speedrun_with_the_records_logit_scale():
    """The record divides the head's output by its 256 input features; everything else is the speedrun net."""
    from cifarbench.models.spec import Scale

    muon, plain = create_spec("speedrun-muon", 3, 32, 10), create_spec("speedrun", 3, 32, 10)
    assert muon.layers[:-1] == plain.layers[:-1]
    assert (muon.layers[-1], plain.layers[-1]) == (Scale(1 / 256), Scale(1 / 9))
    assert build_config("speedrun-muon").model == "speedrun-muon" and build_config("speedrun").model == "speedrun"


def test_linear_schedule():
    cfg = build_config("speedrun-muon", {"epochs": 2})
    sched = make_schedule(cfg, 5)  # 10 steps
    assert [sched(s)[0] for s in (0, 5, 9, 10)] == pytest.approx([cfg.lr, cfg.lr / 2, cfg.lr / 10, 0.0])
    assert {sched(s)[1] for s in range(10)} == {0.85}


def test_newton_schulz_batched_equals_one_by_one():
    """torch stacks the filters of one shape: the batched call is the per-matrix one."""
    g = np.random.default_rng(3).standard_normal((3, 8, 20))
    fro = lambda x: np.sqrt((x * x).sum(axis=(-2, -1), keepdims=True))  # noqa: E731
    batched = newton_schulz(g, 3, fro)
    for i in range(3):
        assert rel(batched[i], ns_reference(g[i])) < 1e-12
