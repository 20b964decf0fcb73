"""`cifarbench bench` end to end with tiny settings: throughput, training mode, outputs, --compare."""

from __future__ import annotations

import csv
import json

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cifarbench.cli import app

TINY = ["--warmup-steps", "1", "--steps", "2", "--repeats", "2", "-b", "4", "--eval-batch-size", "8"]


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])


def _tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    y_train, y_test = np.arange(32) % 4, np.arange(16) % 4
    protos = rng.integers(0, 256, (4, 16, 16, 3))
    np.savez(path, x_train=np.clip(protos[y_train] + rng.integers(-20, 20, (32, 16, 16, 3)), 0, 255).astype(np.uint8),
             y_train=y_train, x_test=np.clip(protos[y_test] + rng.integers(-20, 20, (16, 16, 16, 3)), 0, 255).astype(np.uint8),
             y_test=y_test)
    return path


def test_bench_throughput_outputs_and_compare(tmp_path):
    runner = CliRunner()
    out = tmp_path / "a"
    res = runner.invoke(app, ["bench", "--synthetic", "--dataset", "mnist", "--backend", "numpy,cupy", *TINY, "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = _json(res.stdout)
    assert result["mode"] == "throughput" and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["backend"] == "numpy" and row["train_ips"]["n"] == 2 and row["train_ips"]["min"] > 0
    assert row["train_ips"]["min"] <= row["train_ips"]["median"] <= row["train_ips"]["max"]
    assert row["relative"] == 1.0 and row["baseline"]
    from cifarbench.models import create_spec
    from cifarbench.models.summary import summarize

    macs = summarize(create_spec(row["model"], 1, 28, 10)).macs
    assert row["forward_macs"] == macs > 0 and row["train_flops_per_image"] == 3 * 2 * macs
    assert any(s["backend"] == "cupy" for s in result["skipped"])  # listed, not hidden
    for name in ("bench.json", "bench.csv", "bench.md", "run_log.json", "throughput_train.png", "throughput_eval.png"):
        assert (out / name).stat().st_size > 0
    with Image.open(out / "throughput_train.png") as im:
        assert im.format == "PNG"
    assert list(csv.DictReader((out / "bench.csv").open()))[0]["backend"] == "numpy"
    assert "relative" in (out / "bench.md").read_text()
    assert json.loads((out / "run_log.json").read_text())["fingerprint_id"] == result["fingerprint_id"]
    # compare a result with a copy whose machine differs
    other = dict(result, fingerprint_id="0" * 16)
    other["rows"] = [dict(row, train_ips=dict(row["train_ips"], median=row["train_ips"]["median"] * 2))]
    other["fingerprint"] = json.loads(json.dumps(result["fingerprint"]))
    other["fingerprint"]["hardware"]["cpu_model"] = "elsewhere"
    (tmp_path / "b.json").write_text(json.dumps(other))
    res = runner.invoke(app, ["bench", "--compare", str(out / "bench.json"), str(tmp_path / "b.json"), "--json"])
    assert res.exit_code == 0, res.output
    cmp = _json(res.stdout)
    assert cmp["rows"][0]["ratio"] == pytest.approx(2.0)
    assert not cmp["fingerprints_match"] and "hardware.cpu_model" in cmp["differing_fields"]
    assert "fingerprints differ" in res.stderr


def test_bench_training_mode(tmp_path):
    pytest.importorskip("torch")
    npz = _tiny_npz(tmp_path)
    out = tmp_path / "t"
    res = CliRunner().invoke(app, [
        "bench", "--epochs", "2", "--dataset", f"npz:{npz}", "--backend", "torch,numpy", "-b", "8", "--seeds", "2",
        "--target-acc", "0.01", "--baseline", "numpy", "--lr", "0.01", "--opt", "sgd", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = _json(res.stdout)
    assert result["mode"] == "training" and result["baseline"] == "numpy/cpu/cnn/fp32/bs8"
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == {"torch", "numpy"}
    for r in rows.values():
        assert r["seeds"] == 2 and r["test_accuracy"]["n"] == 2 and 0 <= r["test_accuracy"]["mean"] <= 1
        assert r["total_time_s"]["min"] > 0 and r["epochs"] == 2
        assert r["target_reached"] == 2 and r["time_to_target_s"]["n"] == 2  # every epoch beats 1%
        assert len(r["curves"]) == 2 and len(r["curves"][0]["eval_acc"]) == 2
        for d in r["run_dirs"]:  # each training run writes its own run_log.json
            log = json.loads((Path(d) / "run_log.json").read_text())
            assert log["training"]["epochs"] == 2 and len(log["history"]) == 2
    assert rows["numpy"]["relative"] == 1.0
    expected = rows["numpy"]["total_time_s"]["mean"] / rows["torch"]["total_time_s"]["mean"]
    assert rows["torch"]["relative"] == pytest.approx(expected)
    for name in ("training_time.png", "accuracy_vs_time.png", "bench.md"):
        assert (out / name).stat().st_size > 0


def test_bench_usage_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bench without -o writes runs/bench-TIME in the working directory
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--backend", "nope", "--synthetic"])
    assert res.exit_code == 2 and "unknown backend" in res.output
    res = runner.invoke(app, ["bench", "--backend", "numpy", "--synthetic", "--baseline", "torch", *TINY])
    assert res.exit_code == 2 and "matches none" in res.output
    res = runner.invoke(app, ["bench", "--backend", "numpy", "--synthetic", "--steps", "0"])
    assert res.exit_code == 2


def test_bench_progress_inside_a_case_and_eval_volume_follows_steps(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--synthetic", "--dataset", "mnist", "--backend", "numpy", *TINY,
                                   "-o", str(tmp_path / "p"), "--json", "--no-record"])
    assert res.exit_code == 0, res.output
    row = _json(res.stdout)["rows"][0]
    steps = _json(res.stdout)["settings"]["steps"]
    assert row["eval_images"] == steps * row["batch_size"]  # the default follows --steps
    assert "warm-up:" in res.stderr and "window 1/" in res.stderr and "window 2/" in res.stderr
    res = CliRunner().invoke(app, ["bench", "--synthetic", "--dataset", "mnist", "--backend", "numpy", *TINY,
                                   "--eval-images", "24", "-o", str(tmp_path / "q"), "--json", "--no-record"])
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["rows"][0]["eval_images"] == 24


def test_bench_nothing_runnable_is_a_runtime_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["bench", "--backend", "torch", "--device", "mps", "--synthetic", *TINY, "--no-record"])
    assert res.exit_code == 1 and "nothing could run here" in res.output


def test_bench_fast_dev_run_writes_nothing(tmp_path, monkeypatch):
    from conftest import tree_state

    monkeypatch.chdir(tmp_path)
    before = tree_state(tmp_path)
    res = CliRunner().invoke(app, ["bench", "--synthetic", "--dataset", "mnist", "--backend", "numpy", "-b", "8",
                                   "--fast-dev-run", "--json"])
    assert res.exit_code == 0, res.output
    result = _json(res.stdout)
    assert result["settings"]["steps"] == 2 and result["rows"][0]["train_ips"]["n"] == 1
    assert tree_state(tmp_path) == before
