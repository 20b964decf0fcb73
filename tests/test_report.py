"""report: the table cells, and the JSON/CSV/Markdown writers on a known result."""

from __future__ import annotations

import csv
import io
import json

import pytest

from cifarbench.engine.metrics import summarize
from cifarbench.errors import UsageError
from cifarbench.report import format_table, load_result, skipped_lines, to_csv, to_markdown, write_outputs
from cifarbench.report.writers import RESULT_KIND, flatten_row


def _result(mode="throughput"):
    rows = [
        {"backend": "torch", "device": "cpu", "model": "cnn", "precision": "fp32", "batch_size": 64,
         "train_ips": summarize([900.0, 1000.0, 1200.0]), "eval_ips": summarize([3000.0, 3100.0]),
         "warmup_s": 1.234, "relative": 2.0, "baseline": False},
        {"backend": "numpy", "device": "cpu", "model": "cnn", "precision": "fp32", "batch_size": 64,
         "train_ips": summarize([500.0]), "eval_ips": summarize([800.0]), "warmup_s": 0.5, "relative": 1.0,
         "baseline": True},
    ]
    return {"kind": RESULT_KIND, "mode": mode, "rows": rows, "baseline": "numpy/cpu/cnn/fp32/bs64",
            "relative_meaning": "speed / baseline", "settings": {"warmup_steps": 1, "steps": 2, "repeats": 3,
                                                                  "synthetic": True},
            "skipped": [{"backend": "cupy", "device": "-", "reason": "cupy is not installed"}],
            "fingerprint_id": "abc123", "fingerprint": {"hardware": {"cpu_model": "Test CPU", "gpus": []}}}


def test_table_cells():
    headers, cells = format_table(_result())
    assert headers[-1] == "relative"
    row = dict(zip(headers, cells[0]))
    assert row["train img/s"] == "1,000"  # 3 significant figures
    assert row["train ± std"] == "± 153 (n=3)"  # sample std of (900, 1000, 1200) = 152.75
    assert row["eval img/s"] == "3,050"
    assert row["eval ± std"] == "± 70.7 (n=2)"
    assert row["warm-up s"] == "1.23"
    assert row["relative"] == "2.00x faster"
    assert dict(zip(headers, cells[1]))["relative"] == "1.00 (base)"
    assert dict(zip(headers, cells[1]))["train ± std"] == "(n=1)"
    assert skipped_lines(_result()) == ["cupy -: cupy is not installed"]


def test_training_table_mean_pm_std():
    res = _result("training")
    res["settings"]["target_acc"] = 0.5
    res["rows"] = [{"backend": "torch", "device": "cpu", "model": "cnn", "precision": "fp32", "batch_size": 64,
                    "epochs": 2, "seeds": 2, "total_time_s": summarize([10.0, 12.0]),
                    "time_per_epoch_s": summarize([5.0, 6.0]), "images_per_s": summarize([100.0, 120.0]),
                    "test_accuracy": summarize([0.80, 0.90]), "final_loss": summarize([0.5, 0.7]),
                    "time_to_target_s": summarize([4.0]), "target_reached": 1, "relative": 1.0, "baseline": True}]
    headers, cells = format_table(res)
    row = dict(zip(headers, cells[0]))
    assert row["test acc %"] == "85.00 ± 7.07"  # std of (80, 90) = 7.07
    assert row["total s"] == "11.0 ± 1.4"
    assert row["time to 50%"] == "4.0 s (1/2)"


def test_csv_round_trip():
    text = to_csv(_result())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2
    assert float(rows[0]["train_ips_median"]) == 1000.0
    assert float(rows[0]["train_ips_min"]) == 900.0 and float(rows[1]["train_ips_max"]) == 500.0
    assert rows[1]["baseline"] == "True"
    assert flatten_row({"a": {"b": 1, "c": [1]}, "d": [1, 2], "e": 2}) == {"a_b": 1, "e": 2}


def test_markdown_table():
    md = to_markdown(_result())
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| backend"))
    assert "relative" in header
    assert "| torch | cpu | cnn | fp32 | 64 | 1,000 | ± 153 (n=3) |" in md
    assert "- cupy -: cupy is not installed" in md
    assert "Test CPU" in md and "abc123" in md
    n_cols = header.count("|")
    assert all(ln.count("|") == n_cols for ln in lines if ln.startswith("|"))


def test_write_outputs_and_load(tmp_path):
    paths = write_outputs(_result(), tmp_path / "out")
    assert [p.name for p in paths] == ["bench.json", "bench.csv", "bench.md"]
    assert all(p.stat().st_size > 0 for p in paths)
    back = load_result(tmp_path / "out")
    assert back["rows"][0]["train_ips"]["median"] == 1000.0
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something"}))
    with pytest.raises(UsageError):
        load_result(tmp_path / "other.json")
    with pytest.raises(UsageError):
        load_result(tmp_path / "missing.json")


def test_three_significant_figures_and_slower_rows():
    from cifarbench.report.tables import _relative, sig

    assert [sig(x) for x in (12345.0, 7.04321, 7.0, 0.012345, 999.6, 0.0, None)] == [
        "12,300", "7.04", "7.00", "0.0123", "1,000", "0", "-"]
    assert _relative({"relative": 1 / 31.3, "baseline": False}) == "31.3x slower"
    assert _relative({"relative": 1.0, "baseline": True}) == "1.00 (base)"
