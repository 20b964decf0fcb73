"""fingerprint: the fields, no framework imports, a stable id, and a training run's run_log.json."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from cifarbench import fingerprint as fp_mod
from cifarbench.cli import app
from cifarbench.config import RunConfig
import record_fixtures


def test_collect_without_importing_frameworks():
    code = ("import sys, json; from cifarbench import fingerprint as f; fp = f.collect(with_availability=False); "
            "print(json.dumps({'fp': fp, 'loaded': [m for m in ('torch', 'mlx', 'cupy') if m in sys.modules]}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    assert data["loaded"] == []
    fp = data["fp"]
    hw, sw = fp["hardware"], fp["software"]
    for key in ("os", "os_release", "architecture", "cpu_model", "physical_cores", "logical_cores", "memory_gib",
                "chip", "gpus"):
        assert key in hw
    assert hw["logical_cores"] >= 1 and hw["memory_gib"] > 0
    assert sw["python"] == ".".join(map(str, sys.version_info[:3]))
    assert sw["packages"]["numpy"] == np.__version__
    for key in ("torch", "mlx", "mlx-data", "cupy"):
        assert key in sw["packages"]
    assert "numpy_blas" in sw and "torch_build" in sw and "git" in sw and "cifarbench" in sw
    assert "OMP_NUM_THREADS" in fp["threads"]
    assert len(fp["fingerprint_id"]) == 16


def test_fingerprint_id_covers_stable_fields_only():
    fp = fp_mod.collect(with_availability=False)
    same = json.loads(json.dumps(fp))
    same["created"], same["hostname"] = "another time", "another host"
    assert fp_mod.fingerprint_id(same) == fp["fingerprint_id"]
    other = json.loads(json.dumps(fp))
    other["software"]["packages"]["numpy"] = "0.0.1"
    assert fp_mod.fingerprint_id(other) != fp["fingerprint_id"]
    assert fp_mod.diff(fp, other) == ["software.packages"]


def test_memory_is_memory_gib_and_old_memory_gb_logs_still_read():
    from cifarbench.report.html import machine_panel
    from cifarbench.report.writers import _conditions

    fp = fp_mod.collect(with_availability=False)
    fp["hardware"]["gpus"] = [{"name": "H200", "memory_gib": 139.8, "compute_capability": "9.0"}]
    fp["fingerprint_id"] = fp_mod.fingerprint_id(fp)
    old = json.loads(json.dumps(fp))  # as a run log written before the rename
    hw = old["hardware"]
    hw["memory_gb"] = hw.pop("memory_gib")
    hw["gpus"][0]["memory_gb"] = hw["gpus"][0].pop("memory_gib")
    assert fp_mod.fingerprint_id(old) == fp["fingerprint_id"]  # the rename changed no machine's id
    assert fp_mod.diff(fp, old) == []
    gib = fp["hardware"]["memory_gib"]
    for entry in (fp, old):
        line = _conditions({"fingerprint": entry})
        assert f"{gib} GiB" in line and "None GiB" not in line
        panel = machine_panel(entry["fingerprint_id"], entry, [])
        assert f"{gib} GiB" in panel and "H200 (139.8 GiB)" in panel
    bigger = json.loads(json.dumps(fp))
    bigger["hardware"]["memory_gib"] = gib + 1
    assert fp_mod.fingerprint_id(bigger) != fp["fingerprint_id"] and fp_mod.diff(old, bigger) == ["hardware.memory_gib"]


class _FakeBackend:
    name = "torch"
    device = "cpu"

    def describe(self):
        return "torch cpu (fake)"


def test_training_run_log_has_the_seed_fields(tmp_path):
    recs = [{"epoch": 1, "eval_acc": 0.5, "elapsed_s": 3.0}, {"epoch": 2, "eval_acc": 0.7, "elapsed_s": 6.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = RunConfig(model="cnn", dataset="cifar10", epochs=2, batch_size=64, opt="sgd", lr=0.1, sched="onecycle", seed=1111)
    summary = record_fixtures.summary(
        run_dir=str(tmp_path), total_time_s=12.5, params=573194, test_accuracy=0.8612, class_names=("cat", "dog"),
        checkpoint=str(tmp_path / "model.safetensors"),
        test={"per_class_accuracy": {"cat": 0.9, "dog": 0.8224}, "confusion_matrix": [[9, 1], [2, 8]]})
    log = fp_mod.training_run_log(cfg, summary, _FakeBackend())
    assert log["framework"] == "PyTorch"
    hw = log["hardware"]
    assert set(hw) >= {"OS", "OS_Version", "Architecture", "Processor", "PyTorch_Version", "Device", "Chip"}
    assert hw["Device"] == "CPU"  # the truth, not "MPS"
    tr = log["training"]
    assert (tr["dataset"], tr["num_classes"], tr["seed"], tr["epochs"], tr["batch_size"]) == ("cifar10", 2, 1111, 2, 64)
    assert tr["optimizer"].startswith("SGD(lr=0.1") and tr["scheduler"].startswith("OneCycleLR(max_lr=0.1")
    assert tr["training_time_seconds"] == 12.5 and tr["model"] == "cnn" and tr["model_params"] == 573194
    assert log["results"]["overall_accuracy"] == 0.8612  # fractions in files
    assert log["results"]["per_class_accuracy"] == {"cat": 0.9, "dog": 0.8224}
    from datetime import datetime

    assert datetime.fromisoformat(log["timestamp"]).tzinfo is not None  # ISO 8601 with its offset
    assert log["checkpoint"].endswith("model.safetensors") and isinstance(log["command_line"], list)
    assert log["history"] == recs
    assert log["config"]["lr"] == 0.1
    assert log["fingerprint_id"] == log["fingerprint"]["fingerprint_id"]
    assert any(a["backend"] == "numpy" for a in log["fingerprint"]["availability"])
    json.dumps(log)  # serialisable as is


def test_fingerprint_cli(tmp_path):
    out = tmp_path / "fp" / "run_log.json"
    res = CliRunner().invoke(app, ["fingerprint", "--json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])
    written = json.loads(out.read_text())
    assert printed["fingerprint_id"] == written["fingerprint_id"]
    rows = {(a["backend"], a["device"]): a for a in written["fingerprint"]["availability"]}
    assert rows[("numpy", "cpu")]["available"] is True
    assert all(a["reason"] for a in rows.values())


def test_standalone_run_log_has_the_run_directory_schema(tmp_path):
    """`cifarbench fingerprint` writes the seeds' top-level keys and hardware block, as a run's run_log.json does."""
    out = tmp_path / "run_log.json"
    res = CliRunner().invoke(app, ["fingerprint", "-o", str(out)])
    assert res.exit_code == 0, res.output
    alone = json.loads(out.read_text())
    cfg = RunConfig(model="cnn", dataset="cifar10", epochs=1)
    run = fp_mod.training_run_log(cfg, record_fixtures.summary(run_dir=str(tmp_path)), _FakeBackend())
    assert set(alone) - {"command"} <= set(run)
    assert {"framework", "hardware", "timestamp", "fingerprint_id", "fingerprint"} <= set(alone)
    versions = {k for k in alone["hardware"] if k.endswith("_Version") and k != "OS_Version"}
    assert "NumPy_Version" in versions and "PyTorch_Version" in versions  # both installed in the test env
    same = lambda hw: {k for k in hw if not (k.endswith("_Version") and k != "OS_Version")}  # noqa: E731
    assert same(alone["hardware"]) == same(run["hardware"])
    assert alone["hardware"]["Device"] in {"CPU", "CUDA", "MPS", "GPU"}
    assert alone["framework"] in set(fp_mod.FRAMEWORK_NAMES.values())
    assert alone["fingerprint_id"] == alone["fingerprint"]["fingerprint_id"]
    assert len(alone["timestamp"]) == len("20260208_103051")
