"""The engine loop against a fake backend (no framework): steady images/s accounting, the
interrupt point, resume, and the run log's text.

The fake is a complete plugin written against the primitives of ``Backend``: its "training"
adds ``lr * mean(order[start:stop])`` to one bias, so the final weights depend on every step's
data order, learning rate and position; a replayed or skipped step changes them.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cifarbench import backends
from cifarbench.backends.base import Backend, EpochStats
from cifarbench.config import build_config
from cifarbench.engine.trainer import Trainer

WARM_S, STEP_S = 0.25, 0.01  # first step of a batch size (a "compilation"), then every step


class FakeBackend(Backend):
    name = "fake"
    devices = ("cpu",)
    interrupt_at: int | None = None  # raise KeyboardInterrupt at this call of train_step
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
        time.sleep(STEP_S if stop - start in self.sizes else WARM_S)
        self.sizes.add(stop - start)
        self.w["fc2.bias"][0] += np.float32(lr * self.order[start:stop].mean())
        self.steps += 1
        self.count += stop - start

    def end_epoch(self):
        return EpochStats(loss_sum=0.5 * self.count, correct=self.count // 2, count=self.count)

    def _predict(self, split, batch_size):
        return np.zeros((getattr(self, f"n_{split}"), self.spec.num_classes), np.float32)

    def synchronize(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "fake", f"{__name__}:FakeBackend")
    FakeBackend.calls, FakeBackend.interrupt_at = [], None
    return FakeBackend


def _cfg(tiny_npz, out, **kw):
    # 96 images, batch 20: 5 steps per epoch, the last one of 16 images (a second batch size)
    return build_config(None, {"model": "cnn", "dataset": tiny_npz, "backend": "fake", "epochs": 2, "batch_size": 20,
                               "augment": "none", "output": str(out), "sched": "triangle", "lr": 0.1, **kw})


def test_images_per_s_counts_steady_steps_only(tiny_npz, tmp_path, fake):
    summary = Trainer(_cfg(tiny_npz, tmp_path / "run")).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = rows
    # epoch 1 compiled two batch sizes (20 and 16); epoch 2 nothing
    assert first["warmup_s"] >= 2 * WARM_S and second["warmup_s"] == 0.0
    # steady images/s of epoch 1: 3 steady steps of 20 images, each >= STEP_S; the warm-ups are not in it
    assert first["images_per_s"] <= 60 / (3 * STEP_S)
    assert first["images_per_s"] > 96 / first["train_time_s"]  # the plain ratio would include 0.5 s of warm-up
    assert second["images_per_s"] == pytest.approx(96 / second["train_time_s"])
    assert summary["warmup_s"] == pytest.approx(first["warmup_s"])
    assert summary["images_per_s"] == second["images_per_s"]  # the median over epochs after the first


def test_interrupt_saves_the_step_about_to_run_and_resume_replays_nothing(tiny_npz, tmp_path, fake):
    Trainer(_cfg(tiny_npz, tmp_path / "ref")).run()
    ref_calls = list(fake.calls)
    fake.calls, fake.interrupt_at = [], 8  # call 8 = epoch 2, step 3 (index 2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(tiny_npz, tmp_path / "int")).run()
    side = json.loads((tmp_path / "int" / "checkpoint.json").read_text())
    assert (side["epoch"], side["step_in_epoch"], side["global_step"], side["finished"]) == (1, 2, 7, False)
    fake.calls, fake.interrupt_at = [], None
    Trainer(_cfg(tiny_npz, tmp_path / "int"), run_dir=tmp_path / "int", resume=True).run()
    assert fake.calls == ref_calls[7:]  # exactly the steps not yet taken
    from cifarbench.checkpoint import load_checkpoint

    a, b = load_checkpoint(tmp_path / "ref").state, load_checkpoint(tmp_path / "int").state
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_run_log_names_the_schedule_and_optimizer(tiny_npz, tmp_path, fake):
    Trainer(_cfg(tiny_npz, tmp_path / "run", pct_start=0.25, warmup_start_factor=0.2, final_lr_factor=0.07)).run()
    log = json.loads((tmp_path / "run" / "run_log.json").read_text())
    training = next(v for v in log.values() if isinstance(v, dict) and "scheduler" in v)
    assert training["scheduler"] == "Triangle(lr=0.1, pct=0.25, start=0.2, end=0.07)"
    assert training["optimizer"] == "AdamW(lr=0.1, betas=(0.9, 0.999), weight_decay=0.01)"  # the default optimizer


def test_non_finite_epoch_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tiny_npz, tmp_path, fake,
                                                                                   monkeypatch):
    from cifarbench.checkpoint import load_checkpoint
    from cifarbench.engine.trainer import Diverged

    ends = {"n": 0}

    def end_epoch(self):  # epoch 2's loss is NaN; the host reads it once, at the epoch's end
        ends["n"] += 1
        return EpochStats(loss_sum=float("nan") if ends["n"] == 2 else 0.5 * self.count, correct=0, count=self.count)

    monkeypatch.setattr(FakeBackend, "end_epoch", end_epoch)
    with pytest.raises(Diverged) as info:
        Trainer(_cfg(tiny_npz, tmp_path / "run", epochs=3)).run()
    assert info.value.message == "diverged at epoch 2 (loss nan): lower --lr" and "last finite" in info.value.hint
    side = load_checkpoint(tmp_path / "run").sidecar
    assert (side["epoch"], side["finished"]) == (1, False)  # epoch 1's checkpoint; nothing of epoch 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and len(fake.calls) == 10  # stopped right after epoch 2's steps
