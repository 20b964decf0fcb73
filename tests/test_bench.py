"""bench: timing rule (synchronise before the clock), matrix, baseline, statistics, compare."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import backend_or_skip
from fake_backend import ClockSpy, QueuedDevice
from record_fixtures import record

from cifarbench.backends.base import TrainOptions
from cifarbench.bench import apply_baseline, compare, expand
from cifarbench.bench.throughput import BenchData, Windows, measure
from cifarbench.bench.training import time_to_target
from cifarbench.engine.metrics import summarize
from cifarbench.errors import UsageError


class SlowDevice(QueuedDevice):
    """Each train_step queues STEP seconds of work, predict queues EVAL seconds; synchronize()
    sleeps for what is queued. A bench that reads the clock without synchronising would
    see almost no time at all.
    """

    name = "slow"
    STEP, EVAL = 0.02, 0.03

    def train_step(self, start, stop, lr, momentum):
        self.queued += self.STEP
        self.count += stop - start

    def _predict(self, split, batch_size):
        self.queued += self.EVAL
        return np.zeros((8, 10), np.float32)


def _data(n=32, size=8, ch=3, classes=10, n_eval=8) -> BenchData:
    rng = np.random.default_rng(0)
    return BenchData(rng.integers(0, 256, (n, size, size, ch), dtype=np.uint8), rng.integers(0, classes, n),
                     rng.integers(0, 256, (n_eval, size, size, ch), dtype=np.uint8), rng.integers(0, classes, n_eval),
                     (0.5,) * ch, (0.25,) * ch, size, ch, classes, "test")


def test_measured_time_includes_queued_device_work():
    dev = SlowDevice()
    res = measure(dev, _data(), batch_size=4, win=Windows(warmup_steps=1, steps=3, repeats=2, eval_batch_size=8),
                  lr=0.1, momentum=0.9)
    # 3 steps x 20 ms of queued work per window: only visible if bench synchronises before reading the clock
    assert res["train_window_s"]["n"] == 2
    assert res["train_window_s"]["min"] >= 3 * SlowDevice.STEP
    assert res["train_ips"]["max"] <= 3 * 4 / (3 * SlowDevice.STEP)
    assert res["eval_window_s"]["min"] >= SlowDevice.EVAL
    assert res["warmup_s"] >= SlowDevice.STEP  # warm-up is timed too, and apart
    assert res["train_loss_last"] == pytest.approx(1.5)


@pytest.mark.parametrize("name", ["torch", "numpy", pytest.param("mlx", marks=pytest.mark.slow)])  # mlx: compile
def test_real_backends_synchronise_before_every_clock_read(name):
    from cifarbench.backends.base import OptimConfig
    from cifarbench.models import create_spec, init_params

    backend = backend_or_skip(name, TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3, crop_pad=2, flip=True))
    spec = create_spec("cnn", 3, 8, 10)
    backend.build(spec, init_params(spec, 0))
    backend.configure_optimizer(OptimConfig("sgd", 0.9))
    spy = ClockSpy()
    real_sync = backend.synchronize

    def sync():
        spy.events.append("sync")
        real_sync()

    backend.synchronize = sync
    res = measure(backend, _data(n=8), 4, Windows(0, 2, 2, 8), 0.01, 0.9, clock=spy.clock)
    clocks = [i for i, e in enumerate(spy.events) if e == "clock"]
    assert len(clocks) == 2 * (2 + 2 * 3)  # data, eval warm-up, 2 x (upload, steps, eval): a start and a stop each
    assert all(spy.events[i - 1] == "sync" for i in clocks)
    assert math.isfinite(res["train_loss_last"]) and res["train_ips"]["min"] > 0


def test_summarize_known_values():
    s = summarize([4.0, 1.0, 10.0, 3.0, 2.0])
    assert (s["n"], s["min"], s["median"], s["max"], s["mean"]) == (5, 1.0, 3.0, 10.0, 4.0)
    assert s["std"] == pytest.approx(math.sqrt(12.5))  # sample std: sum of squares 50 / (5 - 1)
    assert summarize([7.0])["std"] == 0.0


def _row(backend, ips=None, total=None, device="cpu"):
    r = {"backend": backend, "device": device, "model": "cnn", "precision": "fp32", "batch_size": 64}
    if ips is not None:
        r["train_ips"] = summarize(ips)
    if total is not None:
        r["total_time_s"] = summarize(total)
    return r


def test_baseline_default_is_fastest_and_relative_is_speed_ratio():
    rows = [_row("torch", [100, 200, 300]), _row("numpy", [50, 50]), _row("mlx", [400])]
    assert apply_baseline(rows, "throughput", None) == "mlx/cpu/cnn/fp32/bs64"
    assert [r["relative"] for r in rows] == pytest.approx([0.5, 0.125, 1.0])
    assert [r["baseline"] for r in rows] == [False, False, True]
    assert apply_baseline(rows, "throughput", "slowest") == "numpy/cpu/cnn/fp32/bs64"
    assert [r["relative"] for r in rows] == pytest.approx([4.0, 1.0, 8.0])
    apply_baseline(rows, "throughput", "first")
    assert rows[1]["relative"] == pytest.approx(0.25)
    apply_baseline(rows, "throughput", "mlx:cpu")
    assert rows[0]["relative"] == pytest.approx(0.5)


def test_training_relative_is_speedup_of_total_time():
    # the seed project's table: CPU ~270 s, MPS ~99 s -> 2.7x
    rows = [_row("torch", total=[270.0], device="cpu"), _row("torch", total=[99.0, 101.0], device="mps")]
    apply_baseline(rows, "training", "slowest")
    assert rows[0]["baseline"] and rows[1]["relative"] == pytest.approx(2.7)
    apply_baseline(rows, "training", None)  # the fastest: mps
    assert rows[1]["baseline"] and rows[0]["relative"] == pytest.approx(1 / 2.7)


def test_time_to_target():
    recs = [record(eval_acc=a, elapsed_s=t) for a, t in [(0.3, 10.0), (0.6, 20.0), (0.55, 30.0), (0.8, 40.0)]]
    assert time_to_target(recs, 0.5) == 20.0
    assert time_to_target(recs, 0.8) == 40.0
    assert time_to_target(recs, 0.9) is None
    assert time_to_target(recs, None) is None


def test_matrix_lists_unavailable_combinations_with_reasons():
    cases, skipped = expand(["torch", "cupy", "cuda"], None, ["cnn", "resnet18"], ["fp32", "fp16"], [32, 64])
    assert {(c.backend, c.device) for c in cases} >= {("torch", "cpu")}
    assert len([c for c in cases if c.device == "cpu"]) == 2 * 2 * 2  # models x precisions x batch sizes
    reasons = {(s["backend"], s["device"]): s["reason"] for s in skipped}
    assert ("cupy", "-") in reasons or ("cupy", "cuda") in reasons  # not installed, or no GPU: either way, said
    if ("torch", "cuda") in reasons:  # the `cuda` alias means torch on cuda
        assert "cuda" in reasons[("torch", "cuda")]
    assert all(s["reason"] for s in skipped)


def test_matrix_unknown_backend_and_device():
    with pytest.raises(UsageError, match="unknown backend"):
        expand(["tensorflow"], None, ["cnn"], ["fp32"], [64])
    _, skipped = expand(["numpy"], ["gpu"], ["cnn"], ["fp32"], [64])
    assert any("has no device 'gpu'" in s["reason"] for s in skipped)
    cases, skipped = expand(["numpy"], None, ["cnn"], ["bf16"], [64])
    assert not cases and "precision bf16 not supported" in skipped[0]["reason"]


def test_compare_ratio_and_fingerprint_warning():
    a = {"mode": "throughput", "rows": [_row("torch", [100.0])], "fingerprint_id": "x",
         "fingerprint": {"hardware": {"cpu_model": "A"}}}
    b = {"mode": "throughput", "rows": [_row("torch", [150.0]), _row("mlx", [10.0])], "fingerprint_id": "y",
         "fingerprint": {"hardware": {"cpu_model": "B"}}}
    res = compare(a, b)
    assert res["rows"][0]["ratio"] == pytest.approx(1.5)
    assert res["only_in_b"][0]["backend"] == "mlx"
    assert not res["fingerprints_match"] and "hardware.cpu_model" in res["differing_fields"]
    assert compare(a, a)["fingerprints_match"]
    with pytest.raises(UsageError):
        compare(a, {**b, "mode": "training"})
