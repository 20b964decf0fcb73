"""The engine loop against a fake backend (no framework): steady images/s accounting, the
interrupt points and resume (the typed records an uninterrupted run makes), and the run log's text.

The fake (fake_backend.py) trains one bias from every step's data order, learning rate and
position, so a replayed or skipped step changes the final weights.
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


CLOCK_FREE = ("epoch", "train_loss", "train_acc", "eval_split", "eval_loss", "eval_acc", "lr", "momentum", "dropout",
              "train_images")


@pytest.mark.parametrize("step_call, predict_call, epochs_done", [  # 80 training images: 4 steps of 20 per epoch
    (3, None, 0),  # mid-epoch 1: its partial sums are saved
    (5, None, 1),  # the first step of epoch 2: nothing of it done, epoch 1's commit stands
    (None, 2, 1),  # epoch 2's evaluation: its training is saved as a whole partial epoch
])
def test_every_interrupt_point_resumes_to_the_uninterrupted_records(tiny_npz, tmp_path, fake, step_call,
                                                                   predict_call, epochs_done):
    from cifarbench.checkpoint import load_checkpoint
    from cifarbench.engine.reporter import RecordingReporter

    fake.warm_s = fake.step_s = 0.0
    ref_rep = RecordingReporter()
    ref = Trainer(_cfg(tiny_npz, tmp_path / "ref", val_split=16), ref_rep).run()
    ref_calls = list(fake.calls)
    fake.calls, fake.predicts, fake.interrupt_at, fake.interrupt_predict_at = [], 0, step_call, predict_call
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(tiny_npz, tmp_path / "int", val_split=16)).run()
    done = len(fake.calls) - (step_call is not None)  # the interrupted call took no step
    fake.calls, fake.interrupt_at, fake.interrupt_predict_at = [], None, None
    rep = RecordingReporter()
    summary = Trainer(_cfg(tiny_npz, tmp_path / "int", val_split=16), rep, run_dir=tmp_path / "int", resume=True).run()
    assert fake.calls == ref_calls[done:]  # exactly the steps not taken, none replayed
    assert summary.start_epoch == epochs_done
    rows = [json.loads(x) for x in (tmp_path / "int" / "metrics.jsonl").read_text().splitlines()]
    want = [{k: getattr(r, k) for k in CLOCK_FREE} for r in ref_rep.records]
    assert [{k: r[k] for k in CLOCK_FREE} for r in rows] == want  # resumed parts' sums included
    assert [{k: getattr(r, k) for k in CLOCK_FREE} for r in rep.records] == want[summary.start_epoch:]
    assert (summary.train_pflops, summary.test_accuracy, summary.final_train_loss) == (
        ref.train_pflops, ref.test_accuracy, ref.final_train_loss)
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
