"""The engine loop against a fake backend (no framework): steady images/s accounting, the
interrupt point, resume, and the run log's text.

The fake is a complete plugin written against the primitives of ``Backend``: its "training"
adds ``lr * mean(order[start:stop])`` to one bias, so the final weights depend on every step's
data order, learning rate and position; a replayed or skipped step changes them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifarbench.backends.base import EpochStats
from cifarbench.config import build_config
from cifarbench.engine.trainer import Trainer
from fake_backend import STEP_S, WARM_S, FakeBackend, fake  # noqa: F401 - fake is a fixture


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
    assert summary.warmup_s == pytest.approx(first["warmup_s"])
    assert summary.images_per_s == second["images_per_s"]  # the median over epochs after the first


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
