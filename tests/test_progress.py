"""Progress inside an epoch: the backends' running sums, when the engine reads them (never per step
unless asked), what the reporters print (live footer on a TTY, plain lines in a pipe, quiet), and
the step caps and subsets (--max-steps, --limit-train, --limit-eval) the trainer applies."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json

import numpy as np
import pytest

from cifarbench.backends import create_backend
from cifarbench.backends.base import EpochStats, OptimConfig, TrainOptions
from cifarbench.config import build_config
from cifarbench.engine.progress import RunPlan, StepProgress
from cifarbench.engine.reporter import RecordingReporter
from cifarbench.engine.schedules import OneCycle
from cifarbench.engine.trainer import Trainer
from cifarbench.models import create_spec, init_params
import record_fixtures
from parity_reference import no_dropout

BACKENDS = [b for b, mod in (("numpy", "numpy"), ("torch", "torch"), ("jax", "jax"), ("mlx", "mlx.core"))
            if importlib.util.find_spec(mod.split(".")[0]) is not None]


# ----- the backends' running sums ---------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_running_stats_is_the_epoch_so_far_and_does_not_reset(name):
    spec = create_spec("cnn", image_size=8)
    spec = dataclasses.replace(spec, layers=no_dropout(spec.layers))
    b = create_backend(name, "cpu", TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3), seed=0)
    b.build(spec, init_params(spec, 0))
    b.configure_optimizer(OptimConfig("sgd", 0.9))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 24).astype(np.int64)
    b.set_data("train", x, y)
    b.begin_epoch(np.arange(24), None, None, 1)
    b.train_step(0, 8, 0.01, 0.9)
    one = b.running_stats()
    assert one.count == 8 and 0 <= one.correct <= 8 and one.loss_sum > 0
    b.train_step(8, 16, 0.01, 0.9)
    two, again = b.running_stats(), b.running_stats()
    assert (two.count, two.correct, two.loss_sum) == (again.count, again.correct, again.loss_sum)  # no reset
    assert two.count == 16 and two.loss_sum > one.loss_sum and two.correct >= one.correct
    end = b.end_epoch()
    assert (end.count, end.correct) == (two.count, two.correct)
    assert end.loss_sum == pytest.approx(two.loss_sum, rel=0, abs=0)  # the same device sums, read twice


# ----- when the engine reads them ---------------------------------------------------------------
class _Counting:
    def __init__(self):
        self.reads, self.count = 0, 0

    def running_stats(self):
        self.reads += 1
        return EpochStats(loss_sum=2.0 * self.count, correct=self.count // 4, count=self.count)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Events(RecordingReporter):
    def __init__(self, every_s=None, every_steps=None):
        super().__init__()
        self.progress_every_s, self.progress_every_steps, self.events = every_s, every_steps, []

    def step_progress(self, p):
        self.events.append(p)


def _drive(rep, steps=100, step_s=0.01, batch=10, plan=RunPlan(steps_after=200, evals_left=3, eval_s=1.5)):
    backend, clock = _Counting(), _Clock()
    prog = StepProgress(rep, backend, 1, 3, 0, steps, batch, plan, clock=clock)
    for i in range(steps):
        clock.t += step_s
        backend.count += batch
        prog.tick(i + 1, 0.1)
    return backend


def test_a_reporter_that_asks_for_nothing_costs_no_read():
    assert _drive(RecordingReporter()).reads == 0


def test_reads_every_k_steps_and_at_the_last_step():
    rep = _Events(every_steps=25)
    backend = _drive(rep)
    assert [e["step"] for e in rep.events] == [25, 50, 75, 100] and backend.reads == 4


def test_reads_every_half_second_of_wall_time():
    rep = _Events(every_s=0.5)
    backend = _drive(rep, steps=100, step_s=0.02)  # 2 s in all: an event every 25 steps, plus the last
    assert [e["step"] for e in rep.events] == [25, 50, 75, 100] and backend.reads == 4


def test_event_fields_and_etas():
    rep = _Events(every_steps=50)
    _drive(rep, steps=100, step_s=0.01, batch=10)
    first = rep.events[0]
    assert first["loss"] == pytest.approx(2.0) and first["acc"] == pytest.approx(0.25)
    assert first["images_per_s"] == pytest.approx(10 / 0.01)
    assert first["epoch_eta_s"] == pytest.approx(50 * 0.01)
    # the rest of this epoch and the 200 steps after it at 10 ms, plus 3 evaluations of 1.5 s
    assert first["run_eta_s"] == pytest.approx(250 * 0.01 + 3 * 1.5)
    assert first["eta_includes_eval"] is True and rep.events[-1]["epoch_eta_s"] == pytest.approx(0.0)


def test_warm_up_steps_are_left_out_of_speed_and_eta():
    rep = _Events(every_steps=10)
    backend, clock = _Counting(), _Clock()
    prog = StepProgress(rep, backend, 1, 1, 0, 20, 10, RunPlan(0, 1, None), clock=clock)
    clock.t += 5.0  # the first step compiles for 5 s
    prog.tick(1, 0.1, warm_s=5.0, warm_steps=1)
    for i in range(1, 10):
        clock.t += 0.1
        prog.tick(i + 1, 0.1, warm_s=5.0, warm_steps=1)
    assert rep.events[0]["images_per_s"] == pytest.approx(100.0)  # 10 images / 0.1 s
    assert rep.events[0]["epoch_eta_s"] == pytest.approx(1.0)  # 10 steps left at 0.1 s


def test_step_log_rows_every_tenth_of_an_epoch_or_30_s_each_the_mean_since_the_last():
    class Ramp(_Counting):  # step i (1-based) has loss i per image: interval means are checkable
        def __init__(self):
            super().__init__()
            self.loss = 0.0

        def running_stats(self):
            self.reads += 1
            return EpochStats(loss_sum=self.loss, correct=self.count // 2, count=self.count)

    backend, clock, log = Ramp(), _Clock(), []
    prog = StepProgress(RecordingReporter(), backend, 2, 3, 0, 50, 10, RunPlan(0, 1, None), clock=clock,
                        step_log=log, steps_per_epoch=50, global_base=50)
    for i in range(50):
        clock.t += 0.01 if i != 31 else 40.0  # step 32 takes 40 s: a row at once (30 s cadence)
        backend.count += 10
        backend.loss += 10.0 * (i + 1)
        prog.tick(i + 1, 0.1)
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30, 32, 37, 42, 47, 50] and backend.reads == len(log)
    assert log[0]["loss"] == pytest.approx(3.0) and log[1]["loss"] == pytest.approx(8.0)  # mean of 1..5, of 6..10
    assert log[6] == {**log[6], "steps_in_row": 2, "loss": pytest.approx(31.5), "global_step": 82}
    assert [r["epoch_pos"] for r in log][:2] == [1.1, 1.2] and log[-1]["epoch_pos"] == 2.0
    images = sum(r["steps_in_row"] * 10 for r in log)
    assert images == 500 and sum(r["loss"] * r["steps_in_row"] * 10 for r in log) == pytest.approx(backend.loss)


# ----- through the trainer ---------------------------------------------------------------------
@pytest.fixture
def small_npz(tmp_path) -> str:
    from conftest import write_npz

    return "npz:" + str(write_npz(tmp_path / "small.npz", size=8))  # 96 train / 40 test images, 4 classes


def _cfg(tiny_npz, **kw):
    base = {"model": "cnn", "dataset": tiny_npz, "backend": "numpy", "epochs": 2, "batch_size": 16,
            "eval_batch_size": 64, "augment": "none"}
    return build_config(None, {**base, **kw})


def test_trainer_progress_and_step_log_match_the_epoch_record(small_npz, tmp_path):
    rep = _Events(every_steps=1)
    Trainer(_cfg(small_npz), rep, run_dir=tmp_path / "r").run()  # 96 images: 6 steps of 16 per epoch
    assert [(e["epoch"], e["step"]) for e in rep.events] == [(ep, s) for ep in (1, 2) for s in range(1, 7)]
    for rec in rep.records:  # the last step's running loss is the epoch's training loss
        last = [e for e in rep.events if e["epoch"] == rec.epoch][-1]
        assert last["loss"] == pytest.approx(rec.train_loss, rel=1e-12)
        assert last["acc"] == pytest.approx(rec.train_acc, rel=1e-12)
    assert rep.events[-1]["run_eta_s"] > 0 and rep.events[6]["eta_includes_eval"] is True
    # steps.jsonl: 10% of 6 steps is a row every step; the rows' interval means add up to each epoch's loss
    steps = [json.loads(x) for x in (tmp_path / "r" / "steps.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["global_step"]) for r in steps] == [
        (e, s, 6 * (e - 1) + s) for e in (1, 2) for s in range(1, 7)]
    for rec in rep.records:
        rows = [r for r in steps if r["epoch"] == rec.epoch]
        assert sum(r["loss"] * r["steps_in_row"] for r in rows) / 6 == pytest.approx(rec.train_loss, rel=1e-12)
        assert rows[-1]["lr"] == rec.lr and rows[-1]["epoch_pos"] == rec.epoch
    assert json.loads((tmp_path / "r" / "checkpoint.json").read_text())["step_records"] == steps  # one unit
    assert Trainer(_cfg(small_npz), write=False).step_log is False  # a run that writes nothing logs nothing
    assert Trainer(_cfg(small_npz), step_log=False).step_log is False  # bench's training mode


def test_max_steps_caps_the_run_and_the_schedule_follows(small_npz, tmp_path):
    rep = _Events(every_steps=1)
    cfg = _cfg(small_npz, epochs=5, max_steps=8, sched="onecycle", lr=0.01)  # 6 steps per epoch
    summary = Trainer(cfg, rep, run_dir=tmp_path / "r").run()
    assert [r.epoch for r in rep.records] == [1, 2] and summary.epochs == 2 and summary.total_steps == 8
    assert [e["step"] for e in rep.events if e["epoch"] == 2] == [1, 2]  # the last epoch is partial
    ref = OneCycle(max_lr=0.01, total_steps=8, base_momentum=0.85, max_momentum=0.9)
    assert rep.records[-1].lr == pytest.approx(ref(7)[0])  # the capped schedule's last step: near zero
    assert rep.records[-1].lr < 1e-5 and rep.events[3]["lr"] == pytest.approx(ref(3)[0])
    side = json.loads((tmp_path / "r" / "checkpoint.json").read_text())
    assert side["finished"] is True and side["global_step"] == 8


def test_limits_take_stratified_subsets(small_npz, tmp_path):
    cfg = _cfg(small_npz, epochs=1, limit_train=40, limit_eval=20, val_split=30)
    t = Trainer(cfg, RecordingReporter(), run_dir=tmp_path / "r", write=False)
    summary = t.run()
    assert (summary.train_images, summary.eval_images, summary.test_images) == (40, 20, 20)
    assert summary.test["total"] == 20
    counts = np.bincount(t.splits.y_train, minlength=4)
    assert counts.sum() == 40 and np.all(counts > 0)
    # proportional to the pool it was drawn from (train minus the val split): within one image per class
    from cifarbench.data import split_validation

    _, y_pool, _, _ = split_validation(t.ds.x_train, t.ds.y_train, 30, 0)
    share = 40 * np.bincount(y_pool, minlength=4) / len(y_pool)
    assert np.all(np.abs(counts - share) < 1), (counts, share)
    again = Trainer(cfg, RecordingReporter(), run_dir=tmp_path / "r2", write=False)
    again.setup()
    assert np.array_equal(again.splits.y_train, t.splits.y_train) and np.array_equal(again.x_test, t.x_test)


# ----- reporters --------------------------------------------------------------------------------
def _event(step, steps=10, **kw):
    return {"epoch": 1, "epochs": 3, "step": step, "steps": steps, "images_per_s": 1234.0, "loss": 1.5, "acc": 0.25,
            "lr": 0.001, "elapsed_s": 3.0, "epoch_eta_s": 75.0, "run_eta_s": 4000.0, "eta_includes_eval": True, **kw}


def _record(epoch):
    return record_fixtures.record(epoch=epoch, train_loss=1.0 / epoch, elapsed_s=float(epoch))


def _info(epochs):
    return record_fixtures.info(epochs=epochs, total_steps=10 * epochs, run_dir="runs/x[1]")


@pytest.fixture
def console(monkeypatch):
    from rich.console import Console

    from cifarbench.cli import _console, progress

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(_console, "err_console", con)
    monkeypatch.setattr(progress, "err_console", con)
    return buf


def test_rich_reporter_prints_every_finished_epoch_above_the_footer(console):
    from cifarbench.cli.progress import RichReporter

    rep = RichReporter()
    rep.start(_info(30))
    for ep in range(1, 31):  # more epochs than a terminal has rows: each row is printed, none is cut
        rep.epoch_begin(ep, 10)
        rep.step_progress(_event(5))
        rep.epoch_end(_record(ep))
    rep.close()
    text = console.getvalue()
    for ep in range(1, 31):
        assert f"{ep}/30" in text
    assert "runs/x[1]" in text  # markup escaped


def test_plain_lines_every_log_interval(small_npz, tmp_path):
    from conftest import invoke

    res = invoke(["train", "--dataset", small_npz, "--backend", "numpy", "-m", "cnn", "-b", "16", "--epochs", "1",
                  "--eval-batch-size", "64", "--log-interval", "2", "-o", str(tmp_path / "r"), "--no-record"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "| step " in ln]
    assert [ln.split("| step ")[1].split()[0] for ln in lines] == ["2/6", "4/6"]  # 6/6 is the epoch line
    for field in ("loss ", "acc ", "images/s ", "lr ", "epoch ETA ", "run ETA "):
        assert field in lines[0]


def test_default_log_interval_is_ten_percent():
    from cifarbench.cli.progress import PlainReporter, parse_log_interval

    rep = PlainReporter()
    rep.epoch_begin(1, 391)
    assert (rep.progress_every_steps, rep.progress_every_s) == (40, 30.0)
    assert parse_log_interval("50,5%,10s") == (50, 0.05, 10.0)
    from cifarbench.errors import UsageError

    with pytest.raises(UsageError, match="--log-interval"):
        parse_log_interval("often")


def test_quiet_prints_warnings_and_the_final_line_only(small_npz, tmp_path):
    from conftest import invoke

    res = invoke(["train", "--dataset", small_npz, "--backend", "numpy", "-m", "cnn", "-b", "16", "--epochs", "1",
                  "--eval-batch-size", "64", "-q", "-o", str(tmp_path / "r"), "--no-record"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("test accuracy ") and "checkpoint" in lines[0]


def test_fast_dev_run_writes_nothing_unless_output(small_npz, tmp_path, monkeypatch):
    from conftest import invoke, tree_state

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "results.db"
    before = tree_state(tmp_path)
    res = invoke(["train", "--dataset", small_npz, "--backend", "numpy", "-m", "cnn", "--sched", "onecycle",
                  "--fast-dev-run", "--json", "--results-db", str(db)])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["total_steps"], s["train_images"], s["eval_images"], s["batch_size"]) == (2, 16, 16, 8)
    assert s["checkpoint"] is None and tree_state(tmp_path) == before  # no runs/, no results db
    res = invoke(["train", "--dataset", small_npz, "--backend", "numpy", "-m", "cnn", "--fast-dev-run",
                  "-o", str(tmp_path / "out"), "--no-record"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_train_downloads_show_progress_bars_then_the_table(console):
    from cifarbench.cli.progress import RichReporter

    rep = RichReporter()
    for done in (0, 4_000_000, 8_000_000):
        rep.download_progress("cifar-10-python.tar.gz", done, 8_000_000)
    assert rep.downloads is not None and rep.downloads.progress is not None  # the `data download` bars
    rep.start(_info(1))
    assert rep.downloads is None  # stopped before the training table starts
    text = console.getvalue()
    assert "cifar-10-python.tar.gz" in text and "8.0" in text and "epoch" in text


def test_plain_downloads_say_start_and_end(capsys):
    from cifarbench.cli.progress import PlainReporter

    rep = PlainReporter()
    for done in (0, 4_000_000, 8_000_000):
        rep.download_progress("mnist[1].gz", done, 8_000_000)
    err = capsys.readouterr().err
    assert "downloading mnist[1].gz ..." in err and "downloaded mnist[1].gz (8.0 MB)" in err
