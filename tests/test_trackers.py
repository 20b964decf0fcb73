"""`train --logger tensorboard|mlflow|wandb|csv`: what each tracker holds, read back with the library's
own reader (TensorBoard's EventAccumulator, MLflow's client on the local file store, the records of a
W&B offline run); resume continues the tracker's run without duplicate points; a tracker that fails
never stops the run; a missing extra is exit 3 before any work.

Runs: lenet on the NumPy backend, 32 training images in batches of 8 (4 steps per epoch), a point
every step (``--log-interval 1``).
"""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import invoke, write_npz

STEPS = 4  # per epoch
ARGS = ["--model", "lenet", "--backend", "numpy", "-b", "8", "--limit-train", "32", "--epochs", "2", "--opt", "sgd",
        "--lr", "0.02", "--log-interval", "1", "--no-record", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return "npz:" + str(write_npz(tmp_path_factory.mktemp("trackers") / "d.npz", n_train=48, n_test=16))


def train(data: str, out: Path, *extra: str):
    res = invoke(["train", "--dataset", data, *ARGS, "-o", str(out), *extra])
    assert res.exit_code == 0, res.output
    return res


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def csv_points(run: Path) -> list[tuple[int, str, float]]:
    from cifarbench.trackers.csv_sink import read_rows

    return [(s, n, v) for s, n, v, _ in read_rows(run / "csv" / "scalars.csv")]


# float32: TensorBoard stores simple_value as float32 (relative rounding 2^-24 ~ 6e-8); a mean of 4 such
# values is off by a few of those. 1e-6 is that bound with a 10x margin.
F32 = 1e-6


def test_tensorboard_and_csv_hold_steps_epochs_test_and_config(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "run"
    train(data, out, "--logger", "tensorboard", "--logger", "csv")
    recs, log = rows(out), json.loads((out / "run_log.json").read_text())
    tb = tb_scalars(out / "tb")
    assert [s for s, _ in tb["step/loss"]] == list(range(1, 2 * STEPS + 1))
    for e, rec in enumerate(recs):  # each point is the mean since the previous one: they average to the epoch's
        losses = [v for _, v in tb["step/loss"][e * STEPS:(e + 1) * STEPS]]
        accs = [v for _, v in tb["step/acc"][e * STEPS:(e + 1) * STEPS]]
        assert sum(losses) / STEPS == pytest.approx(rec["train_loss"], rel=F32)
        assert sum(accs) / STEPS == pytest.approx(rec["train_acc"], rel=F32)
    assert tb["epoch/test_acc"] == [(STEPS, pytest.approx(recs[0]["eval_acc"], rel=F32)),
                                    (2 * STEPS, pytest.approx(recs[1]["eval_acc"], rel=F32))]
    assert [v for _, v in tb["epoch/time_s"]] == pytest.approx([r["epoch_time_s"] for r in recs], rel=F32)
    assert tb["test/acc"] == [(2 * STEPS, pytest.approx(log["results"]["overall_accuracy"], rel=F32))]
    assert [v for _, v in tb["step/lr"]] == pytest.approx([0.02] * 2 * STEPS, rel=F32)
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    hp = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    params = hp.session_start_info.hparams
    assert params["lr"].number_value == pytest.approx(0.02) and params["model"].string_value == "lenet"
    assert params["logger"].string_value == "tensorboard,csv" and params["run.params"].number_value == 61496
    # the CSV holds the same points (full precision), once each
    points = csv_points(out)
    assert len({(s, n) for s, n, _ in points}) == len(points)
    for tag, series in tb.items():
        assert [(s, pytest.approx(v, rel=F32)) for s, n, v in points if n == tag] == series, tag


def test_a_killed_run_resumes_its_tracker_runs_without_duplicate_points(data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    env = {**os.environ, "CIFARBENCH_TEST_KILL_AT": f"step@{STEPS + 3}"}  # epoch 2, step 3: checkpoint at step 4
    killed = subprocess.run([sys.executable, "-m", "cifarbench", "train", "--dataset", data, *ARGS, "-o", str(out),
                             "--logger", "tensorboard,csv"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    before = csv_points(out)
    assert max(s for s, _, _ in before) == STEPS + 3  # the killed run logged past its checkpoint
    res = invoke(["train", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    points = csv_points(out)
    assert len({(s, n) for s, n, _ in points}) == len(points)  # each point once
    assert [s for s, n, _ in points if n == "step/loss"] == list(range(1, 2 * STEPS + 1))
    assert [p for p in points if p[0] <= STEPS] == [p for p in before if p[0] <= STEPS]  # kept as they were
    tb = tb_scalars(out / "tb")  # two event files; TensorBoard drops the killed run's points past step 4
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 2
    assert [s for s, _ in tb["step/loss"]] == list(range(1, 2 * STEPS + 1))
    assert [v for _, v in tb["step/loss"]] == pytest.approx([v for _, n, v in points if n == "step/loss"], rel=F32)
    recs = rows(out)
    assert [v for _, v in tb["epoch/train_loss"]] == pytest.approx([r["train_loss"] for r in recs], rel=F32)


def test_mlflow_file_store_holds_params_and_metrics_and_a_resume_logs_on_in_the_same_run(data, tmp_path,
                                                                                          monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    train(data, out, "--logger", "mlflow", "--epochs", "1")
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    res = invoke(["train", "--resume", str(out), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == run_id
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    exp = client.get_experiment_by_name("cifarbench")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]  # one run, continued
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["lr"] == "0.02" and run.data.params["model"] == "lenet"
    assert run.data.params["epochs"] == "1"  # MLflow's params are immutable: the run's first values stay
    recs = rows(out)
    hist = client.get_metric_history(run_id, "epoch/test_acc")
    assert [(m.step, m.value) for m in hist] == [(STEPS, recs[0]["eval_acc"]), (2 * STEPS, recs[1]["eval_acc"])]
    steps = [m.step for m in client.get_metric_history(run_id, "step/loss")]
    assert sorted(steps) == list(range(1, 2 * STEPS + 1))
    final = json.loads((out / "run_log.json").read_text())["results"]["overall_accuracy"]
    tests = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "test/acc"))
    assert [s for s, _ in tests] == [STEPS, 2 * STEPS] and tests[-1][1] == final  # each part's final test


def wandb_records(path: Path):
    """The records of a W&B offline run file (``run-<id>.wandb``): LevelDB's log format (32 KiB blocks of
    chunks with a 7-byte header: crc32c, length, type full/first/middle/last) after W&B's 7-byte header
    (':W&B', magic, version), each record one ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            rec = pb.Record()
            rec.ParseFromString(parts + chunk if kind == 4 else chunk)
            parts = b""
            yield rec
        elif kind in (2, 3):  # first, middle
            parts += chunk
        else:
            break


@pytest.mark.slow  # W&B starts its service process (~10 s here); test_wandb_calls_* below is the fast sibling
def test_wandb_offline_run_holds_history_and_config(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    train(data, out, "--logger", "wandb")
    run_id = json.loads((out / "wandb.json").read_text())["run_id"]
    files = glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    assert len(files) == 1  # offline (no WANDB_MODE): nothing was sent anywhere
    history, config = {}, {}
    for rec in wandb_records(Path(files[0])):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history[items["_step"]] = items
        elif kind == "run":
            config = {u.key: json.loads(u.value_json) for u in rec.run.config.update}
    assert sorted(history) == list(range(1, 2 * STEPS + 1))
    recs = rows(out)
    assert history[STEPS]["epoch/test_acc"] == recs[0]["eval_acc"]
    assert history[2 * STEPS]["epoch/train_loss"] == recs[1]["train_loss"]
    assert all("step/loss" in h for h in history.values())
    assert config["lr"] == 0.02 and config["model"] == "lenet"


class _FakeWandb:
    """Stands in for the wandb module: records what the tracker asks of it."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], []

    def Settings(self, **kw):  # noqa: N802 - wandb's name
        return kw

    def init(self, **kw):
        self.inits.append(kw)
        fake = self

        class Run:
            def log(self, scalars, step):
                fake.logged.append((step, dict(scalars)))

            def finish(self, exit_code=0):
                fake.finished.append(exit_code)
        return Run()


def test_wandb_calls_are_offline_by_default_and_a_resume_reuses_the_run_id(data, tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    train(data, out, "--logger", "wandb", "--epochs", "1")
    first = fake.inits[0]
    assert first["mode"] == "offline" and first["dir"] == str(out) and first["resume"] == "allow"
    assert first["config"]["lr"] == 0.02 and first["name"] == "run" and fake.finished == [0]
    assert [s for s, _ in fake.logged] == [1, 2, 3, 4, 4, 4]  # steps; the epoch's metrics; the final test
    assert fake.logged[4][1]["epoch/test_acc"] == rows(out)[0]["eval_acc"]
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's choice stands
    res = invoke(["train", "--resume", str(out), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert fake.inits[1]["id"] == first["id"] and fake.inits[1]["mode"] == "online"
    assert [s for s, _ in fake.logged[6:]] == [5, 6, 7, 8, 8, 8]


def test_a_failing_tracker_warns_once_and_the_run_completes(data, tmp_path, monkeypatch):
    from cifarbench.trackers.csv_sink import CsvTracker

    calls = []
    real = CsvTracker.log

    def flaky(self, scalars, step):
        calls.append(step)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(self, scalars, step)

    monkeypatch.setattr(CsvTracker, "log", flaky)
    out = tmp_path / "run"
    res = train(data, out, "--logger", "csv")
    assert calls == [1, 2, 3]  # dropped after its failure
    lines = [ln for ln in res.output.splitlines() if "csv tracker failed" in ln]
    assert lines == ["warning: the csv tracker failed (OSError: [Errno 28] No space left on device); "
                     "training goes on without it"]
    assert [r["epoch"] for r in rows(out)] == [1, 2] and (out / "model.safetensors").is_file()
    assert "test accuracy" in res.output
    assert [s for s, _, _ in csv_points(out)] == [1] * 4 + [2] * 4  # what it logged before stays


def test_a_missing_extra_is_exit_3_before_any_work(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    out = tmp_path / "run"
    res = invoke(["train", "--dataset", data, *ARGS, "-o", str(out), "--logger", "csv,mlflow"])
    assert res.exit_code == 3
    assert res.output.splitlines()[0].startswith("error: --logger mlflow needs the mlflow package")
    assert "pip install 'cifarbench[mlflow]'" in res.output and "model lenet" not in res.output
    assert not out.exists()


def test_fast_dev_run_without_output_turns_trackers_off(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke(["train", "--dataset", data, "--model", "lenet", "--backend", "numpy", "--fast-dev-run",
                  "--logger", "csv"])
    assert res.exit_code == 0, res.output
    assert "warning: --logger csv: off, since --fast-dev-run without -o writes nothing" in res.output
    assert list(tmp_path.iterdir()) == []


def test_logger_flag_is_repeatable_a_comma_list_and_a_recipe_key(tmp_path):
    res = invoke(["train", "--logger", "tensorboard", "--logger", "csv,tensorboard", "--print-config"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout)["logger"] == ["tensorboard", "csv"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("logger: [mlflow]\n")
    res = invoke(["train", "-c", str(recipe), "--print-config"])
    assert yaml.safe_load(res.stdout)["logger"] == ["mlflow"]
    res = invoke(["train", "--logger", "tensorbord", "--print-config"])
    assert res.exit_code == 2
    assert res.output.splitlines()[0] == ("error: --logger: must be one of tensorboard, mlflow, wandb, csv, got "
                                          "'tensorbord' (did you mean 'tensorboard'?)")
    assert "--logger" not in invoke(["bench", "--help"], env={"COLUMNS": "200"}).output


class _Sink:
    def __init__(self, every_steps=None, fail_at=None):
        self.progress_every_steps, self.progress_every_s = every_steps, None
        self.steps, self.fail_at, self.closed = [], fail_at, None
        self.name = "fake"

    def epoch_begin(self, epoch, steps):
        pass

    def step_progress(self, p):
        if p["step"] == self.fail_at:
            raise RuntimeError("boom")
        self.steps.append(p["step"])

    def close(self, failed=False):
        self.closed = failed


def test_tee_gives_each_sink_its_own_cadence_and_drops_a_failing_tracker():
    from cifarbench.engine.reporter import RecordingReporter, Tee

    main = RecordingReporter()
    main.progress_every_steps = 4
    seen = []
    main.step_progress = lambda p: seen.append(p["step"])
    every, failing = _Sink(every_steps=1), _Sink(every_steps=2, fail_at=4)
    tee = Tee(main, [every, failing], clock=lambda: 0.0)
    tee.epoch_begin(1, 10)
    assert tee.progress_every_steps == 1 and tee.progress_every_s is None  # the engine reads as often as the most eager
    for step in range(1, 11):
        tee.step_progress({"step": step, "steps": 10})
    assert seen == [4, 8, 10] and every.steps == list(range(1, 11)) and failing.steps == [2]
    assert failing.closed is True and tee.trackers == [every]
    assert main.warnings == ["the fake tracker failed (RuntimeError: boom); training goes on without it"]
    main.step_progress = lambda p: 1 / 0  # the display's own errors are not swallowed
    with pytest.raises(ZeroDivisionError):
        tee.step_progress({"step": 10, "steps": 10})
