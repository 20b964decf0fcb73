"""Per-batch step phases (Backend.phase_step), mikecvet's .bench.out export and his 4-panel comparison chart.

Timings are never compared with values: the tests check their structure (every phase > 0, min <= avg <=
max, per image = per batch / batch size, the clock read only after the device was blocked) and that a
phase-timed step is the same optimizer step as ``train_step``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import backend_or_skip, invoke
from fake_backend import ClockSpy, QueuedDevice

from cifarbench.backends.base import STEP_PHASES, OptimConfig, TrainOptions
from cifarbench.bench.throughput import BenchData, Windows, measure
from cifarbench.errors import UsageError
from cifarbench.report import benchout, plots
from cifarbench.report.bench_chart import bench_comparison
from cifarbench.report.tables import phase_cells, phase_stats

EPS32 = float(np.finfo(np.float32).eps)
OPTIONS = TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3, crop_pad=2, flip=True)


def _ready(name, x, y, draws):
    from cifarbench.models import create_spec, init_params

    b = backend_or_skip(name, OPTIONS)
    spec = create_spec("lenet", 3, 16, 10)
    b.build(spec, init_params(spec, 0))
    b.configure_optimizer(OptimConfig("sgd", 0.9, weight_decay=5e-4))
    b.set_data("train", x, y)
    b.begin_epoch(*draws, 7)
    return b


# jax: five XLA compilations of lenet (the fused step and four phases), ~10-30 s on 2 busy cores
@pytest.mark.parametrize("name", ["numpy", "torch", pytest.param("jax", marks=pytest.mark.slow), "mlx"])
def test_phase_step_is_train_step_timed_at_synchronised_boundaries(name):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, 16)
    draws = (rng.permutation(16), rng.integers(0, 5, (16, 2)), rng.integers(0, 2, 16).astype(bool))
    fused, split = _ready(name, x, y, draws), _ready(name, x, y, draws)
    spy = ClockSpy()
    for b in (split,):  # every clock read must follow a block of the device (or of the phase's outputs)
        for attr in ("synchronize", "_block"):
            real = getattr(b, attr)
            setattr(b, attr, lambda *a, _r=real: (spy.events.append("sync"), _r(*a))[1])
    for start in (0, 8):
        fused.train_step(start, start + 8, 0.05, 0.9)
        times = split.phase_step(start, start + 8, 0.05, 0.9, clock=spy.clock)
        assert list(times) == list(STEP_PHASES) and all(t > 0 for t in times.values())
    clocks = [i for i, e in enumerate(spy.events) if e == "clock"]
    assert len(clocks) == 2 * (1 + len(STEP_PHASES)) and all(spy.events[i - 1] == "sync" for i in clocks)
    # the same step: bit-equal where the split runs the fused step's own code (numpy, torch, MLX eager);
    # JAX compiles each phase apart, so XLA may fuse and round differently: a few float32 ulps per weight
    a, b = fused.state_dict(), split.state_dict()
    oa, ob = fused.optimizer_state(), split.optimizer_state()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=16 * EPS32 * max(float(np.abs(a[k]).max()), 1.0), err_msg=k)
    for k in oa:
        np.testing.assert_allclose(ob[k], oa[k], rtol=0, atol=16 * EPS32 * max(float(np.abs(oa[k]).max()), 1.0), err_msg=k)
    assert float(ob["step"]) == 2.0


class LazyDevice(QueuedDevice):
    """Each phase primitive queues PHASE seconds of work that runs only when the device is blocked:
    a phase timer that read the clock without blocking would see none of it."""

    name, PHASE, MODEL, SIZE = "lazy", 0.01, "lenet", 16

    def __init__(self):
        super().__init__()
        self.configure_optimizer(OptimConfig())

    def _queue(self, carry):
        self.queued += self.PHASE
        return None, carry

    _step_data = _step_forward = _step_backward = _queue

    def _step_update(self, grads, lr, momentum):
        return self._queue(grads)

    def train_step(self, start, stop, lr, momentum):
        self.queued += 4 * self.PHASE
        self.count += stop - start

    def _predict(self, split, batch_size):
        return np.zeros((8, 10), np.float32)


def _data(n=32, n_eval=8) -> BenchData:
    rng = np.random.default_rng(0)
    return BenchData(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, n),
                     rng.integers(0, 256, (n_eval, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, n_eval),
                     (0.5,) * 3, (0.25,) * 3, 16, 3, 10, "test")


def test_bench_phase_statistics_have_the_structure_of_real_timings():
    dev = LazyDevice()
    row = {"backend": "lazy", "device": "fake", "model": "lenet", "precision": "fp32", "batch_size": 4,
           **measure(dev, _data(), 4, Windows(1, 3, 2, 8, phase_steps=5), 0.1, 0.9)}
    for p in STEP_PHASES:
        s = row[f"phase_{p}_s"]
        assert s["n"] == 5 and LazyDevice.PHASE <= s["min"] <= s["median"] <= s["max"]  # queued work is inside
        assert s["min"] <= s["mean"] <= s["max"]
    total = row["phase_sum_s"]
    assert sum(row[f"phase_{p}_s"]["min"] for p in STEP_PHASES) <= total["min"] + 1e-12
    assert total["max"] <= sum(row[f"phase_{p}_s"]["max"] for p in STEP_PHASES) + 1e-12
    assert row["fused_step_s"]["n"] == 2 and row["fused_step_s"]["min"] >= 4 * LazyDevice.PHASE
    stats = phase_stats(row)
    assert [n for n, _, _ in stats] == [*STEP_PHASES, "sum", "fused step"]
    for name, batch, image in stats:
        assert batch["min"] <= batch["avg"] <= batch["max"]
        assert image == pytest.approx({k: 1e6 * v / 4 for k, v in batch.items()})
    cells = phase_cells({"rows": [row]})
    assert [c[1] for c in cells] == [*STEP_PHASES, "sum", "fused step"] and cells[0][0] == "lazy/fake/lenet/fp32/bs4"
    assert cells[4][-1] == "100%" and cells[5][-1].startswith("sum/fused ")
    off = measure(LazyDevice(), _data(), 4, Windows(0, 2, 1, 8, phase_steps=0), 0.1, 0.9)
    assert not any(k.startswith("phase_") for k in off) and phase_stats({"batch_size": 4, **off}) == []
    with pytest.raises(UsageError, match="phase-steps"):
        Windows(phase_steps=-1).check()


def test_a_backend_without_the_primitives_is_reported_not_timed():
    from test_bench import SlowDevice

    res = measure(SlowDevice(), _data(n=32, n_eval=8), 4, Windows(0, 2, 1, 8, phase_steps=2), 0.1, 0.9)
    assert "does not time the phases" in res["phase_skipped"] and "phase_forward_s" not in res


# ----- .bench.out ------------------------------------------------------------------------------
def _summary(lo, mid, hi):
    return {"n": 3, "min": lo, "median": mid, "mean": mid, "max": hi, "std": 0.0}


def _throughput_row(backend="torch", bs=64):
    return {"backend": backend, "device": "cpu", "model": "cvet-cnn", "precision": "fp32", "batch_size": bs,
            "phase_data_s": _summary(0.001, 0.0015, 0.002), "phase_forward_s": _summary(0.0041995, 0.05025, 0.2229599),
            "phase_backward_s": _summary(0.008, 0.09, 0.4), "phase_optimizer_s": _summary(0.002, 0.013837, 0.06),
            "phase_backprop_s": _summary(0.010616, 0.103837, 0.460154), "phase_sum_s": _summary(0.015, 0.155, 0.66),
            "fused_step_s": _summary(0.012, 0.14, 0.5), "eval_window_s": _summary(0.19, 0.1979, 0.2), "eval_images": 2000}


# the lines mikecvet's viz.py reads, as its regular expressions match them
VIZ = {"epoch": r"epoch_range_s\|\d+:(\d+\.\d+),(\d+\.\d+),(\d+\.\d+)", "test": r"test_run_ms:(\d+\.\d+)",
       "loss": r"loss: \[([^\]]+)\]", "accuracy": r"accuracy: \[([^\]]+)\]"}


def test_bench_out_throughput_block_has_mikecvets_layout():
    block = benchout.blocks({"mode": "throughput", "rows": [_throughput_row()]})[0]
    lines = block.splitlines()
    assert lines[0] == "# cifarbench bench (throughput): torch cpu cvet-cnn fp32 bs64"
    # integer µs per batch (as his ns // 1000), per image the per-batch values // batch size
    assert lines[1] == "batch_inference_range_us|64:4199,50250,222959"
    assert lines[2] == "indiv_inference_range_us:65,785,3483"
    assert lines[3] == "batch_backprop_range_us|64:10616,103837,460154"
    assert lines[4] == "indiv_backprop_range_us:165,1622,7189"
    assert "batch_optimizer_range_us|64:2000,13837,60000" in lines and "batch_step_range_us|64:12000,140000,500000" in lines
    assert re.search(VIZ["test"], block).group(1) == "197.000" and "test_images:2000" in lines
    rec = benchout.parse(block)[0]
    assert rec["batch_size"] == 64 and rec["ranges"]["inference"] == {"batch": (4199, 50250, 222959), "image": (65, 785, 3483)}
    assert set(rec["ranges"]) == {"inference", "backprop", "data", "backward", "optimizer", "step"}


def test_bench_out_training_block_and_mikecvets_own_file_read_back():
    row = {**_throughput_row(), "curves": [{"seed": 3, "train_time_s": [9.9, 4.394, 4.5], "test_time_s": 0.1978,
                                            "train_loss": [2.3071, 2.3026], "eval_acc": [0.105, 0.11]}]}
    block = benchout.blocks({"mode": "training", "rows": [row]})[0]
    assert re.search(VIZ["epoch"], block).groups() == ("4.394", "4.447", "4.500")  # the first epoch is warm-up
    assert re.search(VIZ["test"], block).group(1) == "197.000"
    assert [float(v) for v in re.search(VIZ["accuracy"], block).group(1).split(", ")] == [10.5, 11.0]
    assert [float(v) for v in re.search(VIZ["loss"], block).group(1).split(", ")] == [2.3071, 2.3026]
    # a file as his --bench appends them: two runs, no separator between the records
    his = ("batch_inference_range_us|512:100,200,300\nindiv_inference_range_us:0,0,0\n"
           "batch_backprop_range_us|512:400,500,600\nindiv_backprop_range_us:0,0,1\n"
           "epoch_range_s|512:21.100,22.000,23.000\ntest_run_ms:812.000\nloss: [1.38, 0.45]\naccuracy: [92.4, 97.3]\n")
    recs = benchout.parse(his * 2, "pytorch.gpu.cnn.bench.out")
    assert [r["label"] for r in recs] == ["pytorch.gpu.cnn #1", "pytorch.gpu.cnn #2"]
    assert recs[0]["epoch_s"] == (21.1, 22.0, 23.0) and recs[0]["test_ms"] == 812.0 and recs[0]["accuracy"] == [92.4, 97.3]
    with pytest.raises(UsageError, match=r"x.bench.out:2: not a .bench.out line"):
        benchout.parse("test_run_ms:1.000\nwhat is this\n", "x.bench.out")


def _bench_result():
    return {"mode": "throughput", "rows": [_throughput_row("torch"), _throughput_row("numpy", 32)]}


def _child(code: str, kill_at: str | None):
    env = {k: v for k, v in os.environ.items() if k != "CIFARBENCH_TEST_KILL_AT"}
    if kill_at:
        env["CIFARBENCH_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_bench_out_append_and_chart_survive_a_kill_at_their_write_points(tmp_path):
    """SIGKILL inside each new write (the .bench.out append, a PNG) in a child process: the old file stays
    whole; the next write sweeps what the killed one left and writes old + new."""
    res_path, out, png = tmp_path / "bench.json", tmp_path / "torch.cpu.cnn.bench.out", tmp_path / "cmp.png"
    res_path.write_text(json.dumps(_bench_result()))

    def write_both():  # the chart goes through plots._save, the one PNG writer: the smallest figure exercises it
        benchout.append(out, json.loads(res_path.read_text()))
        plots.input_image(np.zeros((4, 4, 1), np.uint8), str(len(out.read_text())), png)

    code = ("import json\nimport numpy as np\nfrom cifarbench.report import benchout\n"
            f"benchout.append({str(out)!r}, json.load(open({str(res_path)!r})))\n"
            "from cifarbench.report import plots\n"
            f"plots.input_image(np.zeros((4, 4, 1), np.uint8), str(len(open({str(out)!r}).read())), {str(png)!r})\n")
    write_both()
    one, old_png = out.read_bytes(), png.read_bytes()
    assert len(benchout.read(out)) == 2
    killed = _child(code, "bench-out")
    assert killed.returncode == -9, killed.stderr
    assert (out.read_bytes(), png.read_bytes()) == (one, old_png)  # the append died before its rename
    assert [p.name.startswith(f".{out.name}.") for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [True]
    killed = _child(code, "png")
    assert killed.returncode == -9, killed.stderr
    assert (out.read_bytes(), png.read_bytes()) == (one * 2, old_png)  # appended; the image died before its rename
    # the append swept the temp its killed predecessor left; the image's own is left for its next write
    assert [p.name.startswith(f".{png.name}.") for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [True]
    write_both()
    assert out.read_bytes() == one * 3 and len(benchout.read(out)) == 6
    assert png.read_bytes() != old_png  # the image titled with the longer file's size
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # each writer swept its own leftovers


# ----- the comparison chart ----------------------------------------------------------------------
def test_comparison_chart_throughput_panels(tmp_path, unsaved):
    recs = benchout.from_result(_bench_result())
    bench_comparison(recs, tmp_path / "c.png")
    fig = unsaved["c.png"]
    axes = fig.axes
    assert len(axes) == 4
    assert [a.get_title().split(" ")[0] for a in axes] == ["Training", "Test", "Per-batch", "Training"]
    assert "per training step (fused), batch 32, 64" in axes[0].get_title()
    assert len(axes[0].containers) == 2  # one min/mean/max error bar per record
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["torch cpu cvet-cnn fp32 bs64", "numpy cpu cvet-cnn fp32 bs32"]
    assert len(axes[1].patches) == 2 and axes[1].patches[0].get_height() == pytest.approx(197.0)
    # phases: data, forward, backward, optimizer (backprop is drawn only for records without the split)
    assert [t.get_text() for t in axes[2].get_legend().get_texts()] == ["data", "forward", "backward", "optimizer"]
    forward = [b for b in axes[2].containers if b.get_label() == "forward"][0]
    assert [p.get_height() for p in forward.patches] == [785, 1570]  # µs per image: 50,250 // 64 and // 32
    assert axes[3].get_ylabel() == "images / s" and len(axes[3].patches) == 2
    assert axes[3].patches[0].get_height() == pytest.approx(64 / 0.14)
    assert fig.texts[0].get_text().startswith("cifarbench bench comparison:")


def test_comparison_chart_of_mikecvets_files_has_his_panels(tmp_path, drawn):
    his = ("batch_inference_range_us|512:100,200,300\nindiv_inference_range_us:1,2,3\n"
           "batch_backprop_range_us|512:400,500,600\nindiv_backprop_range_us:4,5,6\n"
           "epoch_range_s|512:21.100,22.000,23.000\ntest_run_ms:812.000\nloss: [1.38, 0.45, 0.4]\n"
           "accuracy: [92.4, 97.3, 98.9]\n")
    mlx = "epoch_range_s|512:30.000,31.000,32.000\ntest_run_ms:900.000\nloss: [1.5, 0.6]\naccuracy: [90.0, 96.0]\n"
    (tmp_path / "pytorch.gpu.cnn.bench.out").write_text(his)
    (tmp_path / "mlx.gpu.cnn.bench.out").write_text(mlx)
    res = invoke(["plot", str(tmp_path / "pytorch.gpu.cnn.bench.out"), str(tmp_path / "mlx.gpu.cnn.bench.out"),
                  "-o", str(tmp_path / "his.png")])
    assert res.exit_code == 0, res.output
    fig = drawn["his.png"]
    main, twin = fig.axes[:4], fig.axes[4:]
    assert len(fig.axes) == 5 and len(twin) == 1  # the loss axis shares panel 4 with the accuracy
    assert main[0].get_title().startswith("Training time intervals per epoch, batch 512")
    assert main[0].get_ylabel() == "time (s)"
    assert [t.get_text() for t in main[2].get_legend().get_texts()] == ["forward", "backward + optimizer"]
    assert [len(line.get_xdata()) for line in main[3].get_lines()] == [3, 2]  # accuracy per epoch, each file
    assert [len(line.get_xdata()) for line in twin[0].get_lines()] == [3, 2]  # loss per epoch
    assert main[3].get_xlabel() == "epoch" and all(float(t).is_integer() for t in main[3].get_xticks())
    mixed = invoke(["plot", str(tmp_path / "pytorch.gpu.cnn.bench.out"), str(tmp_path)])
    assert mixed.exit_code == 2 and "not both" in mixed.output


def test_bench_cli_prints_the_phase_table_and_appends_bench_out(tmp_path, unsaved):
    out = tmp_path / "numpy.cpu.cnn.bench.out"
    # --fast-dev-run writes no run directory, but the file asked for by name; 2 phase-timed steps
    args = ["bench", "--backend", "numpy", "--synthetic", "-m", "lenet", "-b", "8", "--fast-dev-run",
            "--bench-out", str(out), "--json"]
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert "per-batch step phases" in res.output and "sum/fused" in res.output
    for phase in ("data", "forward", "backward", "optimizer"):
        assert re.search(rf"│\s+{phase}\s+│", res.output), phase
    result = json.loads(res.stdout[res.stdout.index("{"):res.stdout.rindex("}") + 1])
    assert result["rows"][0]["phase_forward_s"]["n"] == 2 and result["settings"]["phase_steps"] == 2
    rec = benchout.read(out)
    assert len(rec) == 1 and rec[0]["batch_size"] == 8 and rec[0]["label"] == "numpy cpu lenet fp32 bs8"
    assert set(rec[0]["ranges"]) == {"inference", "backprop", "data", "backward", "optimizer", "step"}
    assert not unsaved and not list(tmp_path.glob("runs"))  # nothing else written
    plot = invoke(["plot", str(out), "-o", str(tmp_path / "c.png")])  # his chart from the file
    assert plot.exit_code == 0, plot.output
    assert [a.get_title().split(" ")[0] for a in unsaved["c.png"].axes] == ["Training", "Test", "Per-batch", "Training"]
    bad = invoke(["bench", "--backend", "numpy", "--synthetic", "--fast-dev-run", "--bench-out", str(tmp_path)])
    assert bad.exit_code == 2 and "is a directory" in bad.output
