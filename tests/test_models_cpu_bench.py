"""benchmarks/models_cpu.py at tiny size: one epoch per model through the Trainer, a Markdown table."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "models_cpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("models_cpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_models_cpu_table_on_synthetic_data(capsys):
    pytest.importorskip("torch")
    text = _script().main(["--dataset", "synthetic", "--limit", "48", "--test-limit", "20", "--batch-size", "16",
                           "--models", "lenet,simplecnn,nope"])
    assert capsys.readouterr().out.strip() == text.strip()
    assert text.startswith("synthetic: 48 training / 20 test images, 1 epoch, batch 16")
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in text.splitlines()[4:]}
    assert rows["`lenet`"][0] == "62,006" and rows["`simplecnn`"][0] == "334,442"
    for model in ("`lenet`", "`simplecnn`"):
        train_ips, eval_ips, epoch_s, acc = rows[model][1:]
        assert float(train_ips.replace(",", "")) > 0 and float(eval_ips.replace(",", "")) > 0 and float(epoch_s) > 0
        correct = float(acc.rstrip("%")) / 100 * 20  # accuracy over the 20 test images: a whole count
        assert re.fullmatch(r"\d+\.\d\d%", acc) and abs(correct - round(correct)) < 1e-6
    assert rows["`nope`"][0].startswith("failed: UsageError: unknown model 'nope'")
