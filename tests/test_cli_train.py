"""`cifarbench train` and `cifarbench test` end to end on small data, with the PyTorch backend."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cifarbench.checkpoint import load_checkpoint
from cifarbench.cli import app

pytest.importorskip("torch")
runner = CliRunner()

FAST = ["--epochs", "2", "--batch-size", "16", "--eval-batch-size", "64", "--backend", "torch", "--device", "cpu"]


def run(args):
    return runner.invoke(app, args, catch_exceptions=False)


def _train(tiny_npz, out, *extra):
    if "--model" not in extra:
        extra = ("--model", "cnn", *extra)
    res = run(["train", "--dataset", tiny_npz, *FAST, "-o", str(out), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_train_writes_run_directory(tiny_npz, tmp_path):
    out = tmp_path / "run"
    summary = _train(tiny_npz, out, "--augment", "crop+flip", "--val-split", "16")
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "model.safetensors", "optimizer.safetensors",
                 "checkpoint.json", "run_log.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["eval_split"] == "val" for r in rows)
    assert summary["train_images"] == 80 and summary["eval_images"] == 16 and summary["test_images"] == 40
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["test"]["total"] == 40
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    ck = load_checkpoint(out)
    assert ck.model == "cnn" and ck.num_classes == 4 and ck.meta["class_names"][0] == "class0"
    assert json.loads((out / "checkpoint.json").read_text())["finished"] is True
    from cifarbench.models import create_spec
    from cifarbench.models.summary import summarize

    cost = summarize(create_spec("cnn", 3, 32, 4))
    assert (summary["forward_macs"], summary["train_flops_per_image"]) == (cost.macs, cost.train_flops_per_image)
    assert [r["train_images"] for r in rows] == [80, 80]
    assert summary["train_pflops"] == pytest.approx(cost.train_flops_per_image * 160 / 1e15, rel=1e-12)
    assert json.loads((out / "run_log.json").read_text())["results"]["train_pflops"] == summary["train_pflops"]


def test_learns_and_test_command_agrees_across_backends(tiny_npz, tmp_path):
    out = tmp_path / "run"
    summary = _train(tiny_npz, out, "--epochs", "4", "--lr", "0.003")
    assert summary["test_accuracy"] > 0.5  # 4 classes: chance is 0.25
    res = run(["test", str(out), "--json", "--backend", "torch"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert np.array(r["confusion_matrix"]).sum() == 40
    res_np = run(["test", str(out), "--json", "--backend", "numpy"])
    assert res_np.exit_code == 0, res_np.output
    assert json.loads(res_np.stdout)["accuracy"] == pytest.approx(r["accuracy"])
    table = run(["test", str(out)])
    assert "class0" in table.stdout and "test accuracy" in table.stdout
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    assert run(["test", str(out), "--plots", str(plots)]).exit_code == 0
    for name in ("per_class_accuracy.png", "confusion_matrix.png", "samples.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _interrupt_at(monkeypatch, call_no):
    """Make the call_no-th training step raise KeyboardInterrupt (as Ctrl-C would)."""
    from cifarbench.backends.torch_backend import TorchBackend

    original = TorchBackend.train_step
    calls = {"n": 0}

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == call_no:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(TorchBackend, "train_step", interrupting)
    return lambda: monkeypatch.setattr(TorchBackend, "train_step", original)


def _assert_same_weights(dir_a, dir_b):
    a, b = load_checkpoint(dir_a).state, load_checkpoint(dir_b).state
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _interrupted_then_resumed(tiny_npz, out, monkeypatch, call_no, *extra):
    restore = _interrupt_at(monkeypatch, call_no)
    res = runner.invoke(app, ["train", "--dataset", tiny_npz, *FAST, "-o", str(out), *extra])
    assert res.exit_code == 130, res.output
    assert "resumable checkpoint" in res.output
    restore()
    side = json.loads((out / "checkpoint.json").read_text())
    res = run(["train", "--resume", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return side


def test_cpu_runs_repeat_bit_for_bit_and_resume_matches(tiny_npz, tmp_path, monkeypatch):
    """Dropout, crop+flip and OneCycle: two runs and an interrupted+resumed one end bit-identical."""
    extra = ("--model", "cnn", "--augment", "crop+flip", "--opt", "sgd", "--lr", "0.05", "--sched", "onecycle")
    _train(tiny_npz, tmp_path / "a", *extra)
    _train(tiny_npz, tmp_path / "b", *extra)
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    # 96 images / 16 = 6 steps per epoch: call 7 is the first step of epoch 2
    side = _interrupted_then_resumed(tiny_npz, tmp_path / "c", monkeypatch, 7, *extra)
    assert (side["epoch"], side["step_in_epoch"], side["finished"]) == (1, 0, False)
    _assert_same_weights(tmp_path / "a", tmp_path / "c")
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_ctrl_c_mid_epoch_resumes_exactly(tiny_npz, tmp_path, monkeypatch):
    """A model without dropout resumed mid-epoch replays the same order: bit-identical weights."""
    extra = ("--model", "lenet", "--augment", "flip", "--opt", "sgd", "--lr", "0.02")
    _train(tiny_npz, tmp_path / "ref", *extra)
    side = _interrupted_then_resumed(tiny_npz, tmp_path / "int", monkeypatch, 9, *extra)
    assert (side["epoch"], side["step_in_epoch"]) == (1, 2)
    _assert_same_weights(tmp_path / "ref", tmp_path / "int")
    res = run(["train", "--resume", str(tmp_path / "int")])
    assert res.exit_code == 2 and "already finished" in res.output


def test_print_config_and_list_configs(tmp_path):
    res = run(["train", "-c", "resnet18-onecycle", "--epochs", "3", "--print-config"])
    assert res.exit_code == 0
    assert "epochs: 3" in res.stdout and "sched: onecycle" in res.stdout
    res = run(["train", "--list-configs"])
    assert "cnn-adamw" in res.stdout and "resnet18-onecycle" in res.stdout


def test_models_and_backends_commands():
    res = run(["models", "--json"])
    rows = {m["name"]: m["params"] for m in json.loads(res.stdout)["models"]}
    assert rows["cnn"] == 573194 and rows["resnet18"] == 11173962
    res = run(["models", "--dataset", "cifar100", "--json"])
    assert {m["name"]: m["params"] for m in json.loads(res.stdout)["models"]}["cnn"] == 584804
    res = run(["backends", "--json"])
    matrix = {(r["backend"], r["device"]): r for r in json.loads(res.stdout)}
    assert matrix[("torch", "cpu")]["available"] is True
    assert matrix[("torch", "cuda")]["reason"]


def test_python_m_and_no_framework_imports():
    code = ("import sys, cifarbench, cifarbench.cli, cifarbench.config, cifarbench.engine.trainer, "
            "cifarbench.trackers, cifarbench.trackers.base; print(sorted(m for m in ('torch', 'mlx', 'cupy', "
            "'jax', 'tensorboard', 'mlflow', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    out = subprocess.run([sys.executable, "-m", "cifarbench", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("cifarbench ")
