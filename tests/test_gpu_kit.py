"""The GPU kit (benchmarks/gpu_kit.py, gpu_summary.py): the scheduler's budgets, the process-group kill,
the JPEG decoder, and the summariser on a synthetic $OUT written in the formats the parts produce."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_kit  # noqa: E402
import gpu_summary  # noqa: E402
from gpu_kit import Part  # noqa: E402


def rows_of(md: str, first: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell is `first`."""
    out = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == first:
                out.append(cells)
    return out


# ----- scheduler --------------------------------------------------------------------------------------------------
def test_timeout_reserves_the_floors_of_later_core_parts_only():
    part = Part("a", ["x"], cap_s=200, floor_s=10)
    later = [Part("b", ["x"], 100, 60), Part("c", ["x"], 100, 90),
             Part("d", ["x"], 100, 100, core=False),      # extra: not reserved
             Part("e", None, 100, 500, reason="cannot run here")]  # will be skipped: not reserved
    assert gpu_kit.timeout_for(part, 300, later) == 300 - 150
    assert gpu_kit.timeout_for(part, 1000, later) == 200  # the cap binds
    # earlier parts come first: short of time, a part still gets its floor, eating later reservations
    assert gpu_kit.timeout_for(part, 100, later) == part.floor_s
    assert gpu_kit.timeout_for(part, 6, later) == 6 < part.floor_s  # the run loop then skips it


def test_run_kills_a_part_and_its_children_at_its_budget(tmp_path):
    pidfile = tmp_path / "child.pid"
    child = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
             f" open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    parts = [
        Part("slow", [sys.executable, "-c", child], cap_s=3, floor_s=1),
        Part("needs-slow", [sys.executable, "-c", "print(1)"], 10, 1, after=("slow",)),
        Part("quick", [sys.executable, "-c", "import json; print(json.dumps({'x': 1}))"], 10, 1),
        Part("too-big", [sys.executable, "-c", "print(1)"], 100, 1000, core=False),
        Part("here-not", None, 10, 1, reason="needs CUDA"),
    ]
    work, out = tmp_path / "work", tmp_path / "out"
    t0 = time.monotonic()
    recs = {r["part"]: r for r in gpu_kit.run(parts, 60, work, out, 1, {"call": 1, "size": "tiny", "device": "cpu"})}
    assert time.monotonic() - t0 < 30
    assert recs["slow"]["status"] == "timeout" and recs["slow"]["wall_s"] < 15
    child_pid = int(pidfile.read_text())
    for _ in range(50):  # the grandchild got the group's SIGTERM
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the part's child process outlived its budget")
    assert recs["needs-slow"]["status"] == "skipped" and "slow" in recs["needs-slow"]["reason"]
    assert recs["quick"]["status"] == "ok"
    assert recs["too-big"]["status"] == "skipped" and "time budget" in recs["too-big"]["reason"]
    assert recs["here-not"] == {"part": "here-not", "status": "skipped", "reason": "needs CUDA", "wall_s": 0.0}
    files = gpu_summary.load_call(out / "raw-call1.tar.gz")
    assert json.loads(files["quick.out"]) == {"x": 1}
    assert [p["part"] for p in json.loads(files["parts.json"])["parts"]] == [p.name for p in parts]


def test_decode_keeps_order_labels_and_limits(tmp_path):
    from PIL import Image

    blobs, colours = [], [(10 * i, 255 - 10 * i, 5 * i) for i in range(7)]
    for c in colours:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), c).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    src = tmp_path / "src.npz"
    np.savez(src, train_jpeg=np.concatenate(blobs), train_offsets=offsets, test_jpeg=np.concatenate(blobs[:3]),
             test_offsets=offsets[:4], y_train=np.arange(7, dtype=np.uint8), y_test=np.arange(3, dtype=np.uint8),
             class_names=np.array([f"c{i}" for i in range(10)]))
    dst = tmp_path / "out.npz"
    assert gpu_kit.decode_part(src, dst, limit=5, test_limit=None) == 0
    d = np.load(dst)
    assert d["x_train"].shape == (5, 32, 32, 3) and d["x_test"].shape == (3, 32, 32, 3)
    assert d["y_train"].tolist() == [0, 1, 2, 3, 4] and d["y_train"].dtype == np.int64
    # a flat JPEG colour survives within a few levels: each image is where its index says
    means = d["x_train"].reshape(5, -1, 3).mean(axis=1)
    assert np.abs(means - np.array(colours[:5])).max() < 4


# ----- summariser -------------------------------------------------------------------------------------------------
def _stats(values):
    return {"n": len(values), "min": min(values), "median": float(np.median(values)), "max": max(values),
            "mean": float(np.mean(values)), "std": float(np.std(values))}


def _bench(rows, compile_mode=None):
    cfg = {"compile": compile_mode is not None, "compile_mode": compile_mode or "default"}
    out = []
    for model, precision, batch, ips, warm in rows:
        out.append({"backend": "torch", "device": "cuda", "model": model, "precision": precision, "batch_size": batch,
                    "train_ips": _stats([ips * 0.98, ips, ips * 1.01]), "eval_ips": _stats([3 * ips] * 3),
                    "warmup_s": warm, "eval_warmup_s": warm / 2, "images_per_window": 50 * batch})
    return json.dumps({"config": cfg, "rows": out, "skipped": []})


def _airbench_log(runs):
    cols = ["run   ", "epoch", "train_acc", "val_acc", "tta_val_acc", "time_seconds"]

    def line(vals):
        return "".join(f"|  {str(v).rjust(len(c))}  " for v, c in zip(vals, cols)) + "|"

    text = [line(cols)]
    for run, acc, t in runs:
        text.append(line([run, 1, "0.5000", "0.6000", "", f"{t / 2:.4f}"]))
        text.append(line(["", "eval", "", "", f"{acc:.4f}", f"{t:.4f}"]))
    accs = np.array([a for r, a, _ in runs if r != "warmup"])
    text.append(f"Mean: {accs.mean():.4f}    Std: {accs.std(ddof=1):.4f}")
    return "\n".join(text) + "\n"


def _speedrun(accs, times):
    def run(seed, acc, t):
        return {"seed": seed, "test_accuracy": acc, "timed_s": t, "warmup_s": 0.4, "eval_s": 0.3, "setup_s": 1.5,
                "epochs": 10, "batch_size": 1024, "train_images": 50000}
    return json.dumps({"precision": "bf16", "compile_mode": "off", "warmup_runs": [run(0, 0.5, 9.0) | {"warmup_s": 6.0}],
                       "runs": [run(i + 1, a, t) for i, (a, t) in enumerate(zip(accs, times))]})


def _write_call1(work: Path, out: Path) -> None:
    work.mkdir(parents=True)
    parts = [{"part": n, "status": "ok", "wall_s": w, "timeout_s": 100} for n, w in
             (("env", 3), ("sync", 40), ("bench-cnn", 20), ("bench-resnet18-default", 95),
              ("bench-resnet18-reduce-overhead", 70), ("speedrun", 60), ("airbench", 120), ("onecycle", 80.5))]
    parts.append({"part": "bench-resnet18-max-autotune", "status": "timeout", "wall_s": 120.0, "timeout_s": 120,
                  "reason": "stopped at its 120 s budget"})
    (work / "parts.json").write_text(json.dumps({"call": 1, "size": "full", "device": "cuda", "parts": parts}))
    (work / "env.json").write_text(json.dumps({"python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0",
                                               "gpu": {"name": "NVIDIA H200", "memory_gib": 139.8, "sms": 132,
                                                       "capability": "9.0"}}))
    (work / "sync.txt").write_text("cnn       fp32  adamw  compile=off              ok (6 steps, mean loss 2.31)\n"
                                   "resnet18  bf16  sgd    compile=off              FAILED: a sync\n")
    (work / "bench-cnn.out").write_text(_bench([("cnn", "fp32", 64, 40000, 1.0), ("cnn", "bf16", 64, 45000, 1.0),
                                                ("cnn", "fp32", 512, 120000, 1.2), ("cnn", "bf16", 512, 160000, 1.1)]))
    (work / "bench-resnet18-default.out").write_text(_bench([("resnet18", "bf16", 1024, 85000, 48.0)], "default"))
    (work / "bench-resnet18-reduce-overhead.out").write_text(
        _bench([("resnet18", "bf16", 1024, 95000, 30.0)], "reduce-overhead"))
    (work / "speedrun.json").write_text(_speedrun([0.91, 0.915, 0.905], [3.0, 3.2, 3.1]))
    (work / "airbench.log").write_text(_airbench_log([("warmup", 0.1, 70.0), ("0", 0.907, 2.0), ("1", 0.908, 2.1),
                                                      ("2", 0.906, 1.9)]))
    (work / "onecycle.out").write_text(json.dumps({
        "precision": "bf16", "epochs": 40, "total_time_s": 75.25, "warmup_s": 20.0, "images_per_s": 61000.0,
        "test_accuracy": 0.9312, "device_name": "torch 2.11.0 cuda (NVIDIA H200)"}))
    out.mkdir()
    gpu_kit.pack(work, out, 1)


def test_summary_tables_from_a_synthetic_out(tmp_path):
    _write_call1(tmp_path / "work", tmp_path / "out")
    md = gpu_summary.summarise([tmp_path / "out"])
    assert "Dry run" not in md and "NVIDIA H200" in md
    # throughput: the b512 rows carry the cnn goal, met by bf16 only
    cnn512 = {r[1]: r for r in rows_of(md, "cnn") if r[2] == "512"}
    assert cnn512["bf16"][4].startswith("160,000 (156,800–161,600)") and cnn512["bf16"][8] == "≥ 150k met"
    assert cnn512["fp32"][8] == "≥ 150k **missed**"
    assert [r[8] for r in rows_of(md, "cnn") if r[2] == "64"] == ["", ""]  # no goal for b64
    # compile modes: reduce-overhead is fastest; max-autotune timed out and says so
    assert "Fastest mode: **reduce-overhead** (95,000 img/s train; its first step, where it compiles, took 30.0 s)" in md
    (ma,) = rows_of(md, "max-autotune")
    assert ma[1] == "–" and ma[6] == "timeout: stopped at its 120 s budget"
    assert rows_of(md, "default")[0][3] == "48.0"
    # speedrun vs airbench: the warm-up runs are left out of both means
    (ours,) = [r for r in rows_of(md, "cifarbench `speedrun` bf16, compile off")]
    assert ours[1] == "3" and ours[2] == "91.00% ± 0.50%" and ours[3] == "3.10 ± 0.10"
    (air,) = rows_of(md, "airbench94_muon.py (the record's code)")
    assert air[1] == "3" and air[2] == "90.70% ± 0.10%" and air[3] == "2.00 ± 0.10" and air[4].startswith("70.0")
    assert "less time per run), cifarbench `speedrun` bf16, compile off: **missed** (91.00% vs 90.70%; 3.10 s vs 2.00 s)" in md
    # onecycle: command wall from the parts record, trainer total from the summary; the 60 s goal missed
    (oc,) = rows_of(md, "onecycle")
    assert oc[1:8] == ["bf16", "40", "80.5", "75.2", "20.0", "61,000", "93.12%"]
    assert "- Goal < 60 s (trainer total): **missed**" in md
    # the sync failure and the timed-out part are reported
    assert rows_of(md, "resnet18")[0][:5] == ["resnet18", "bf16", "sgd", "off", "FAILED: a sync"]
    assert "- call 1: bench-resnet18-max-autotune (timeout)" in md


def test_airbench_parser_reads_the_records_table():
    parsed = gpu_summary.parse_airbench(_airbench_log([("warmup", 0.1, 70.0), ("0", 0.9071, 1.8), ("1", 0.9052, 1.9)]))
    assert [r["accuracy"] for r in parsed["runs"]] == [0.9071, 0.9052]
    assert [r["time_s"] for r in parsed["runs"]] == [1.8, 1.9]
    assert parsed["warmup"] == [{"run": "warmup", "accuracy": 0.1, "time_s": 70.0}]
    assert parsed["printed_mean"] == pytest.approx(np.mean([0.9071, 0.9052]), abs=5e-5)


def test_summary_marks_a_dry_run_and_a_missing_call(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "parts.json").write_text(json.dumps({"call": 2, "size": "tiny", "device": "cpu", "parts": [
        {"part": "train-cupy", "status": "skipped", "reason": "CuPy needs a CUDA GPU", "wall_s": 0.0}]}))
    (work / "train-torch.out").write_text(json.dumps({"test_accuracy": 0.25, "test_images": 128, "total_time_s": 9.0,
                                                       "final_train_loss": 2.1, "device_name": "torch cpu"}))
    (work / "train-mlx.out").write_text(json.dumps({"test_accuracy": 0.2578125, "test_images": 128, "total_time_s": 30.0,
                                                     "final_train_loss": 2.0, "device_name": "mlx cpu"}))
    md = gpu_summary.summarise([work])
    assert "**Dry run" in md and "## 1." not in md and "## 5." in md
    (mlx,) = rows_of(md, "mlx")
    assert mlx[2] == "25.78%" and mlx[5] == "+0.78" and mlx[6] == f"{100 * (0.2578125 * 0.7421875 / 128) ** 0.5:.2f}"
    assert rows_of(md, "cupy")[0][6] == "skipped: CuPy needs a CUDA GPU"


def test_call1_plan_measures_what_the_issue_asks_and_its_core_fits_the_deadline(tmp_path):
    parts = {p.name: p for p in gpu_kit.call1_parts(gpu_kit.Sizes(tiny=False, device="cuda"), tmp_path)}
    cnn = parts["bench-cnn"].cmd
    assert cnn[cnn.index("-b") + 1] == "64,512" and cnn[cnn.index("--precision") + 1] == "fp32,bf16"
    assert cnn[cnn.index("--repeats") + 1] == "5"  # median of 5 windows
    eager = parts["bench-resnet18-eager"].cmd
    assert eager[eager.index("-b") + 1] == "512" and "--no-compile" in eager
    for mode in ("default", "reduce-overhead", "max-autotune"):
        cmd = parts[f"bench-resnet18-{mode}"].cmd
        assert cmd[cmd.index("--compile-mode") + 1] == mode and cmd[cmd.index("-b") + 1] == "1024"
    sr = parts["speedrun"].cmd
    assert sr[sr.index("--runs") + 1] == "10" and sr[sr.index("--warmup-runs") + 1] == "1"
    oc = parts["onecycle"].cmd
    assert "resnet18-onecycle" in oc and "--epochs" not in oc  # the recipe's 40 epochs
    # every core part gets at least its floor inside the run-book's deadline, whatever the extras do
    names = list(parts)
    assert names.index("speedrun") < names.index("onecycle") < names.index("bench-resnet18-max-autotune")
    core = [p for p in parts.values() if p.core and (p.cmd is not None or p.name == "airbench")]
    assert sum(p.floor_s for p in core) <= 545 - 60


def test_call3_runs_speedrun_muon_next_to_airbench_and_profiles_the_optimizer(tmp_path):
    """Issue 21: 10 speedrun-muon runs and the record's 10 in one call, the profile first; core fits 545 s."""
    parts = {p.name: p for p in gpu_kit.call3_parts(gpu_kit.Sizes(tiny=False, device="cuda"), tmp_path)}
    sr = parts["speedrun-muon"].cmd
    assert sr[sr.index("--recipe") + 1] == "speedrun-muon" and sr[sr.index("--runs") + 1] == "10"
    prof = parts["muon-profile"].cmd
    assert prof[prof.index("--precision") + 1] == "bf16" and "--batch-size" not in prof  # the script's 2000
    names = list(parts)
    assert names.index("muon-profile") < names.index("speedrun-muon") < names.index("airbench")
    core = [p for p in parts.values() if p.core]
    assert sum(p.floor_s for p in core) <= 545 - 60


def test_summary_section_for_call3(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    parts = [{"part": n, "status": "ok", "wall_s": 10, "timeout_s": 100} for n in ("env", "muon-profile", "speedrun-muon")]
    (work / "parts.json").write_text(json.dumps({"call": 3, "size": "full", "device": "cuda", "parts": parts}))
    (work / "speedrun-muon.json").write_text(json.dumps(json.loads(_speedrun([0.905, 0.909], [2.0, 2.2])) | {"recipe": "speedrun-muon"}))
    (work / "muon-profile.json").write_text(json.dumps({
        "batch_size": 2000, "precision": "bf16", "step_ms": 80.0, "optimizer_ms": 8.0, "optimizer_share_clock": 0.1,
        "optimizer_share_profiler": 0.12, "goal_met": True, "ns_dtype": "torch.bfloat16"}))
    out.mkdir()
    gpu_kit.pack(work, out, 3)
    md = gpu_summary.summarise([out])
    assert "## 6. `speedrun-muon` next to airbench" in md
    (ours,) = rows_of(md, "cifarbench `speedrun-muon` bf16, compile off")
    assert ours[1] == "2" and ours[2].startswith("90.70%")
    (prof,) = rows_of(md, "muon-profile")
    assert prof[2:6] == ["80.00", "8.00", "10.00%", "12.00%"] and prof[6].startswith("met")
