"""NumPy and JAX backends vs PyTorch: logits and one optimizer step on every registered model.

The JAX backend runs the very same checks (it is skipped where jax is not installed).

The reference is plain torch.nn.functional walking the same spec (tests/parity_reference.py,
independent of the torch backend), NCHW-contiguous: torch's plain CPU kernels, the most accurate
torch CPU path (the oneDNN channels_last path was measured 1000x further from float64). Batch 8
at 16 px keeps every BN channel's statistics over >= 32 values; real eps (BN 1e-5, Adam 1e-8).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.backends.numpy_backend import NumpyBackend
from cifarbench.backends.numpy_backend.arrays import blas_threads
from cifarbench.backends.numpy_backend.augment import normalise
from cifarbench.models import create_spec, init_params, model_names
from cifarbench.models import spec as S

torch = pytest.importorskip("torch")

from parity_reference import (  # noqa: E402
    CONTRACT, SCALE_TWINS, cancelled_biases, check_step_against_float64, flat, no_dropout, parity_size, reference_step, registry_param, rel,
    torch_forward)

SIZE, BATCH = 16, 8  # every registered model builds at 16x16; a quarter of the work of 32x32
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tests run on a shared, busy CPU, where 2-thread OpenBLAS GEMMs stall (see blas_threads); torch's pool too."""
    before, torch_before = blas_threads(), torch.get_num_threads()
    blas_threads(1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(torch_before)
    if before is not None:
        blas_threads(before)


def batch(spec, n, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, spec.image_size, spec.image_size, spec.in_channels), dtype=np.uint8)
    y = rng.integers(0, spec.num_classes, n).astype(np.int64)
    return x, y


def normalised_nchw(x):
    return ((x / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).astype(np.float32).transpose(0, 3, 1, 2)


def heavy(name: str) -> bool:
    """Deep or big models: a step plus the float32/float64 references take 5-30 s on a loaded 2-core CPU."""
    spec = create_spec(name, image_size=SIZE)
    convs = sum(isinstance(layer, S.Conv) for layer in S.iter_layers(spec.layers))
    return spec.num_params() > 2_000_000 or convs > 20 or name in SCALE_TWINS


def model_param(name):
    return pytest.param(name, id=name, marks=[pytest.mark.slow] if heavy(name) else [])


def make_model(name):
    spec = create_spec(name, image_size=parity_size(name, SIZE))
    spec = dataclasses.replace(spec, layers=no_dropout(spec.layers))
    return spec, init_params(spec, seed=3)


@pytest.fixture(params=[registry_param(n) for n in model_names()])
def model(request):
    return make_model(request.param)


def _backend_class(name):
    if name == "numpy":
        return NumpyBackend
    pytest.importorskip("jax")
    from cifarbench.backends.jax_backend import JaxBackend

    return JaxBackend


@pytest.fixture(params=["numpy", "jax"])
def backend_cls(request):
    return _backend_class(request.param)


def assert_within_contract(spec, state, x, ours, ref32, train: bool) -> None:
    """ours within CONTRACT of torch float32, or, where torch float32 is itself that far off, of a float64
    run of the same reference: deep train-mode forwards (resnet50-imagenet, BN over 32 values a channel
    in its last stage) put torch float32 1.0e-4 from float64 on one CPU (a 2-core Xeon) while the
    backend was 4.9e-5 from it; the contract is the distance to the exact result."""
    if rel(ours, ref32) < CONTRACT:
        return
    t64 = {k: torch.tensor(v).double() for k, v in state.items()}
    ref64 = torch_forward(spec, t64, torch.tensor(x).double(), train=train).numpy()
    print(f"{spec.name} train={train}: against float64: ours {rel(ours, ref64):.1e}, torch32 {rel(ref32, ref64):.1e}")
    assert rel(ours, ref64) < CONTRACT


def test_logits_match_torch(model, backend_cls):
    spec, state = model
    x = normalised_nchw(batch(spec, BATCH)[0])
    be = backend_cls("cpu", TrainOptions())
    be.build(spec, state)
    ours, caps = be.forward(x)
    t = {k: torch.tensor(v) for k, v in state.items()}
    ref = torch_forward(spec, t, torch.tensor(x), train=False).numpy()
    assert ours.shape == (BATCH, spec.num_classes) and ours.dtype == np.float32
    assert_within_contract(spec, state, x, ours, ref, train=False)
    # training-mode forward (batch statistics) agrees too, and captures come back NCHW
    ours_tr, caps = be.forward(x, train=True, capture=spec.capture_points[:1])
    ref_tr = torch_forward(spec, {k: torch.tensor(v) for k, v in state.items()}, torch.tensor(x), train=True).numpy()
    assert_within_contract(spec, state, x, ours_tr, ref_tr, train=True)
    assert caps[spec.capture_points[0]].shape[0] == BATCH and caps[spec.capture_points[0]].ndim in (2, 4)
    print(f"{be.name} {spec.name}: logits rel eval {rel(ours, ref):.1e} train {rel(ours_tr, ref_tr):.1e}")


SGD = OptimConfig("sgd", momentum=0.9, weight_decay=5e-4, nesterov=True)
ADAMW = OptimConfig("adamw", weight_decay=0.05)
LR = {"sgd": 0.05, "adamw": 1e-3}
MOMENTUM, SMOOTHING = 0.85, 0.1


# JAX compiles each model's step (~10-40 s on a loaded 2-core CPU): the default suite steps these
# on JAX, one per layer family; `-m slow` steps every model, as for NumPy.
JAX_QUICK = {"cnn", "cvet-cnn", "lenet", "resnet20", "speedrun"}


def step_params():
    out = []
    for n in model_names():
        for b in ("numpy", "jax"):
            slow = heavy(n) or (b == "jax" and n not in JAX_QUICK)
            out.append(pytest.param(n, b, id=f"{n}-{b}", marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.mark.parametrize("opt", [SGD, ADAMW], ids=["sgd", "adamw"])
@pytest.mark.parametrize("name,backend_name", step_params())
def test_one_step_matches_torch(name, opt, backend_name):
    backend_cls = _backend_class(backend_name)
    spec, state = make_model(name)
    x, y = batch(spec, BATCH)
    lr = LR[opt.name]
    be = backend_cls("cpu", TrainOptions(mean=MEAN, std=STD, label_smoothing=SMOOTHING))
    be.build(spec, state)
    be.configure_optimizer(opt)
    be.set_data("train", x, y)
    be.begin_epoch(np.arange(BATCH), None, None, seed=0)
    be.train_step(0, BATCH, lr, MOMENTUM)
    stats = be.end_epoch()
    # the reference starts from the very float32 batch the backend normalised (see reference_step)
    bits = normalise(x, np.array(MEAN, np.float32), np.array(STD, np.float32), np.float32).transpose(0, 3, 1, 2)
    ref = reference_step(spec, state, x, y, opt, lr, MOMENTUM, MEAN, STD, SMOOTHING, inputs=bits)

    assert abs(stats.loss_sum / BATCH - ref.loss) < 1e-4 * abs(ref.loss)
    assert stats.count == BATCH and stats.correct == int((ref.logits.argmax(1) == y).sum())
    ours, st = be.state_dict(), be.optimizer_state()
    # Adam moves every entry by ~lr * g / |g|, whatever |g|: for a conv bias that BN cancels,
    # g is pure round-off, so its new value is lr * sign(noise) in any implementation; it is
    # checked only as bounded (it cannot move more than one Adam step), not for equality.
    noise = cancelled_biases(spec.layers) if opt.name != "sgd" else set()
    names = [k for k in spec.param_shapes() if k not in noise]
    whole = rel(flat(ours, names), flat(ref.new, names))
    print(f"{be.name} {name} {opt.name}: new weights rel to torch {whole:.1e}")
    fresh = backend_cls("cpu", TrainOptions(mean=MEAN, std=STD))
    fresh.build(spec, state)
    logits = fresh.forward(bits, train=True)[0]
    direct = check_step_against_float64(spec, state, x, y, opt, lr, MOMENTUM, MEAN, STD, SMOOTHING, bits, names,
                                        ours, st, be.name, logits)
    limited = not direct
    if direct:
        assert whole < 1e-4
    for k in spec.param_shapes():
        if k in noise:
            assert np.abs(ours[k] - state[k]).max() <= lr * 1.01, k
        elif not limited and opt.name == "sgd":
            # per tensor for SGD only: AdamW's first step moves every entry by +-lr whatever |g|,
            # so per tensor it counts entries whose gradient sign is round-off (a few in a
            # small-gradient tensor exceed 1e-4 there, in torch float32 vs float64 as well)
            assert rel(ours[k], ref.new[k]) < 1e-4, k
        assert not np.array_equal(ours[k], state[k]), k  # every parameter was actually updated
    if not limited:  # optimizer state as a whole (a cancelled bias has only noise in it)
        keys = sorted(ref.opt_state)
        assert rel(flat(st, keys), flat(ref.opt_state, keys)) < 1e-4
    for k in spec.buffer_shapes():
        assert rel(ours[k], ref.new[k]) < 1e-4, k  # running stats (unbiased variance), frozen weights
    assert float(st["step"]) == 1.0
