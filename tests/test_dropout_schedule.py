"""definfo's dynamic dropout: the schedule's numbers, every backend's set_dropout (eager and inside
compiled steps), and the trainer applying it one epoch behind (a pure function of the metrics, so a
resumed run recomputes the same rates)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from cifarbench.backends.base import OptimConfig, TrainOptions
from cifarbench.engine.schedules import DropoutSchedule
from cifarbench.models import init_params
from cifarbench.models.spec import Dropout, Flatten, Linear, ModelSpec, ReLU, dropout_rates, with_dropout

BACKENDS = [b for b, mod in (("torch", "torch"), ("numpy", "numpy"), ("mlx", "mlx"), ("jax", "jax"))
            if importlib.util.find_spec(mod) is not None]


# ----- the schedule ------------------------------------------------------------------------------
def test_linear_and_cosine_decay_lag_one_epoch_and_clamp():
    lin = DropoutSchedule("linear_decay", 0.6, 0.2, 0.7, epochs=10)
    rates = lin.rates([0.5] * 9)
    assert rates[0] == rates[1] == 0.6  # epoch 1 trains with progress 0/10: definfo's lag
    assert rates[2] == pytest.approx(0.6 * 0.9 + 0.2 * 0.1)  # after epoch index 1: progress 1/10
    assert rates[9] == pytest.approx(0.6 * 0.2 + 0.2 * 0.8)
    cos = DropoutSchedule("cosine_decay", 0.5, 0.1, 0.7, epochs=4)
    assert cos.rates([0.1, 0.2, 0.3]) == pytest.approx(
        [0.5, 0.5, 0.1 + 0.4 * (1 + math.cos(math.pi / 4)) / 2, 0.1 + 0.4 * (1 + math.cos(math.pi / 2)) / 2])
    assert DropoutSchedule("none", 0.9, 0.1, 0.7, 5).rates([0.1]) == [0.9, 0.7]  # clamped after an epoch


def test_adaptive_lowers_on_improvement_raises_after_patience_ignores_small_changes():
    s = DropoutSchedule("adaptive", 0.5, 0.1, 0.7, epochs=20, patience=2)
    rates = s.rates([0.3, 0.4, 0.4, 0.4, 0.5])
    assert rates == pytest.approx([0.5, 0.45, 0.45, 0.5, 0.6, 0.45])
    tiny = DropoutSchedule("adaptive", 0.105, 0.1, 0.7, epochs=20)
    assert tiny.rates([0.3]) == [0.105, 0.105]  # 0.0945 clamps to 0.1: a change of 0.005 is ignored


# ----- every backend -----------------------------------------------------------------------------
def _spec(p: float) -> ModelSpec:
    layers = (Flatten(), Linear("fc1", 3 * 4 * 4, 64), ReLU(), Dropout(p), Linear("fc2", 64, 4))
    return ModelSpec("mlp", layers, 3, 4, 4)


def _last_dropout_spec() -> ModelSpec:  # dropout on the logits: dropped entries are exact zeros
    return ModelSpec("drop-out", (Flatten(), Linear("fc", 3 * 4 * 4, 512), Dropout(0.0)), 3, 4, 512)


def _make(name):
    from cifarbench.backends import create_backend

    return create_backend(name, "cpu", TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_dropout_changes_the_rate_of_the_forward_pass(backend):
    spec = _last_dropout_spec()
    b = _make(backend)
    state = init_params(spec, 0)
    b.build(spec, state)
    x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    plain = b.forward(x, train=True, dropout=False)[0]
    assert np.array_equal(b.forward(x, train=True)[0], plain)  # p = 0: nothing dropped
    b.set_dropout(0.5)
    assert dropout_rates(b.spec) == [0.5]
    y = b.forward(x, train=True)[0]
    dropped = float(np.mean(y == 0))
    # 4096 Bernoulli(0.5) draws: the fraction's std is sqrt(0.25 / 4096) = 0.0078; allow 5 of them
    assert abs(dropped - 0.5) < 5 * math.sqrt(0.25 / y.size)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * plain[kept], rtol=4 * np.finfo(np.float32).eps)
    assert np.array_equal(b.forward(x, train=False)[0], b.forward(x, train=False, dropout=False)[0])
    with pytest.raises(Exception, match=r"outside \[0, 1\)"):
        b.set_dropout(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_train_step_follows_a_new_rate(backend):
    """A step at rate 0.5 (compiled/traced where the backend compiles), then set_dropout(0.0): the next
    step must equal the same step of a fresh backend built at rate 0.0 from the same state."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 32).astype(np.int64)
    order, offsets, flips = np.arange(32), np.zeros((32, 2), np.int64), np.zeros(32, bool)
    opt = OptimConfig("sgd", momentum=0.9)

    def ready(spec, state, opt_state=None):
        b = _make(backend)
        b.build(spec, state)
        b.configure_optimizer(opt)
        if opt_state is not None:
            b.load_optimizer_state(opt_state)
        b.set_data("train", x, y)
        return b

    a = ready(_spec(0.5), init_params(_spec(0.5), 0))
    a.begin_epoch(order, offsets, flips, 3)
    a.train_step(0, 16, 0.1, 0.9)
    a.end_epoch()
    state, opt_state = a.state_dict(), a.optimizer_state()
    a.set_dropout(0.0)
    a.begin_epoch(order, offsets, flips, 4)
    a.train_step(16, 32, 0.1, 0.9)
    a.end_epoch()

    b = ready(with_dropout(_spec(0.5), 0.0), state, opt_state)
    b.begin_epoch(order, offsets, flips, 4)
    b.train_step(16, 32, 0.1, 0.9)
    b.end_epoch()
    got, want = a.state_dict(), b.state_dict()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ----- the trainer -------------------------------------------------------------------------------
def test_trainer_applies_the_schedule_one_epoch_behind(tiny_npz, tmp_path):
    pytest.importorskip("torch")
    from conftest import invoke

    args = ["train", "cnn", "--dataset", tiny_npz, "--epochs", "3", "--batch-size", "32", "--threads", "1",
            "--opt", "sgd", "--lr", "0.01"]
    cfg = tmp_path / "drop.yaml"
    cfg.write_text("dropout_rate: 0.6\ndropout_schedule: linear_decay\nmin_dropout: 0.2\n")
    run = tmp_path / "run"
    res = invoke([*args, "-c", str(cfg), "-o", str(run)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    want = DropoutSchedule("linear_decay", 0.6, 0.2, 0.7, 3).rates([r["eval_acc"] for r in rows[:2]])
    assert [r["dropout"] for r in rows] == pytest.approx(want)
    assert want[2] == pytest.approx(0.6 * 2 / 3 + 0.2 / 3)
    assert "0.600 -> 0.467" in res.output.replace("\n", " ")

    plain = tmp_path / "plain"
    res = invoke([*args, "-o", str(plain), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((plain / "metrics.jsonl").read_text())["dropout"] == 0.25  # cnn's own rate
