"""A fake backend (no framework) for tests of the engine loop.

The fake is a complete plugin written against the primitives of ``Backend``: its "training"
adds ``lr * mean(order[start:stop])`` to one bias, so the final weights depend on every step's
data order, learning rate and position; a replayed or skipped step changes them. Its sums are
exact (loss 0.5 per image, half the images correct), so the rows it yields are deterministic.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from cifarbench import backends
from cifarbench.backends.base import Backend, EpochStats

WARM_S, STEP_S = 0.25, 0.01  # first step of a batch size (a "compilation"), then every step


class ModelFreeBackend(Backend):
    """A backend with no model: the primitives a timing test does not reach, as no-ops."""

    def set_data(self, split, x, y): ...
    def _build(self, spec): ...
    def _get_tensors(self): return {}
    def _set_tensors(self, tensors): ...
    def _forward(self, x, train, capture, dropout): return np.zeros((len(x), 10), np.float32), {}
    def _configure_optimizer(self, opt): ...
    def _get_optimizer_state(self): return {}, 0
    def _set_optimizer_state(self, slots, step): ...


class ClockSpy:
    """Records the order of synchronize() calls and clock reads (a timer's ``clock`` argument)."""

    def __init__(self):
        self.events: list[str] = []

    def clock(self):
        self.events.append("clock")
        return time.perf_counter()


class QueuedDevice(ModelFreeBackend):
    """A device whose calls return at once and whose work (``queued`` seconds) runs only when it is
    synchronised: a timer that reads the clock without synchronising sees almost none of it."""

    devices = ("fake",)
    MODEL, SIZE = "cnn", 8

    @classmethod
    def probe(cls):
        return {"fake": None}

    def __init__(self):
        from cifarbench.backends.base import TrainOptions
        from cifarbench.models import create_spec, init_params

        super().__init__("fake", TrainOptions())
        spec = create_spec(self.MODEL, 3, self.SIZE, 10)
        self.build(spec, init_params(spec, 0))  # Backend checks the weights; this device ignores them
        self.queued, self.syncs, self.count = 0.0, 0, 0

    def synchronize(self):
        self.syncs += 1
        time.sleep(self.queued)
        self.queued = 0.0

    def begin_epoch(self, order, offsets, flips, seed):
        self.count = 0

    def end_epoch(self):  # like the real ones, reading the stats would block; here it is left to synchronize
        return EpochStats(loss_sum=1.5 * self.count, correct=0, count=self.count)


class FakeBackend(Backend):
    name = "fake"
    devices = ("cpu",)
    interrupt_at: int | None = None  # raise KeyboardInterrupt at this call of train_step
    interrupt_predict_at: int | None = None  # ... or at this call of predict (an evaluation)
    predicts = 0
    warm_s, step_s = WARM_S, STEP_S  # seconds a step sleeps: the first of a batch size, then each
    calls: list = []

    @classmethod
    def probe(cls):
        return {"cpu": None}

    def _build(self, spec):
        self.w, self.sizes = {}, set()

    def _get_tensors(self):
        return self.w

    def _set_tensors(self, tensors):
        self.w = {k: v.copy() for k, v in tensors.items()}

    def _forward(self, x, train, capture, dropout):
        return np.zeros((len(x), self.spec.num_classes), np.float32), {}

    def _configure_optimizer(self, opt):
        self.steps = 0

    def _get_optimizer_state(self):
        return {}, self.steps

    def _set_optimizer_state(self, slots, step):
        self.steps = step

    def set_data(self, split, x, y):
        setattr(self, f"n_{split}", len(y))

    def begin_epoch(self, order, offsets, flips, seed):
        self.order, self.count = np.asarray(order), 0

    def train_step(self, start, stop, lr, momentum):
        type(self).calls.append(start)
        if len(type(self).calls) == type(self).interrupt_at:
            raise KeyboardInterrupt
        time.sleep(self.step_s if stop - start in self.sizes else self.warm_s)
        self.sizes.add(stop - start)
        self.w["fc2.bias"][0] += np.float32(lr * self.order[start:stop].mean())
        self.steps += 1
        self.count += stop - start

    def end_epoch(self):
        return EpochStats(loss_sum=0.5 * self.count, correct=self.count // 2, count=self.count)

    def _predict(self, split, batch_size):
        type(self).predicts += 1
        if type(self).predicts == type(self).interrupt_predict_at:
            raise KeyboardInterrupt
        return np.zeros((getattr(self, f"n_{split}"), self.spec.num_classes), np.float32)

    def synchronize(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "fake", "fake_backend:FakeBackend")
    FakeBackend.calls, FakeBackend.interrupt_at = [], None
    FakeBackend.predicts, FakeBackend.interrupt_predict_at = 0, None
    FakeBackend.warm_s, FakeBackend.step_s = WARM_S, STEP_S
    return FakeBackend
