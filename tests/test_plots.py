"""Pictures: every chart is a real, decodable, non-empty PNG; plot and activations CLIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cifarbench.cli import app
from cifarbench.engine.metrics import summarize
from cifarbench.report import plots


def _png(path, min_size=(100, 100)):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 2  # not a blank canvas


def _row(name, ips):
    return {"backend": name, "device": "cpu", "model": "cnn", "precision": "fp32", "batch_size": 64,
            "train_ips": summarize(ips), "eval_ips": summarize([2 * x for x in ips]),
            "total_time_s": summarize([100.0 / ips[0]]),
            "curves": [{"seed": 0, "elapsed_s": [1.0, 2.0], "eval_acc": [0.3, 0.5]}]}


def test_bench_charts(tmp_path):
    rows = [_row("torch", [100.0, 120.0, 90.0]), _row("numpy", [20.0, 25.0])]
    paths = plots.bench_charts({"mode": "throughput", "rows": rows}, tmp_path)
    assert [p.name for p in paths] == ["throughput_train.png", "throughput_eval.png"]
    paths += plots.bench_charts({"mode": "training", "rows": rows, "settings": {"target_acc": 0.4}}, tmp_path)
    assert {p.name for p in paths} >= {"training_time.png", "accuracy_vs_time.png"}
    for p in paths:
        _png(p)


def test_throughput_bars_draw_medians_whiskers_and_labels(tmp_path, drawn):
    rows = [_row("torch", [100.0, 120.0, 90.0]), _row("numpy", [20.0, 25.0])]
    plots.throughput_bars(rows, tmp_path / "t.png")
    (ax,) = drawn["t.png"].axes
    assert [round(b.get_width(), 6) for b in ax.patches] == [100.0, 22.5]  # one bar per row, at the median
    assert [t.get_text() for t in ax.get_yticklabels()] == ["torch cpu cnn fp32 bs64", "numpy cpu cnn fp32 bs64"]
    assert ax.get_title() == "training throughput" and ax.get_xlabel().startswith("images / s")
    (whiskers,) = ax.collections  # min-max error bars, one segment per row
    assert [tuple(seg[:, 0]) for seg in whiskers.get_segments()] == [(90.0, 120.0), (20.0, 25.0)]


def test_training_curves_draw_train_and_eval_per_run(tmp_path, drawn):
    recs = [{"epoch": e, "train_loss": 1.0 / e, "eval_loss": 1.2 / e, "train_acc": 0.2 * e, "eval_acc": 0.15 * e,
             "eval_split": "val"} for e in (1, 2, 3)]
    plots.training_curves([("a", recs), ("b", recs[:2])], tmp_path / "c.png")
    fig = drawn["c.png"]
    ax_loss, ax_acc, ax_lr = fig.axes
    assert [l.get_label() for l in ax_loss.lines] == ["a train", "a val", "b train", "b val"]
    assert fig.legends and ax_loss.get_legend() is None  # one legend, below the panels
    assert [t for t in ax_loss.get_xticks() if 1 <= t <= 3] == [1.0, 2.0, 3.0]  # integer epoch ticks
    assert ax_lr.get_ylabel().startswith("learning rate")
    assert plots.run_title("a", recs, {"model": "cnn", "dataset": "cifar10"}) == "a: cnn on cifar10, val 45.00%"
    assert fig._suptitle.get_text() == "a: val 45.00%\nb: val 30.00%"
    assert list(ax_acc.lines[1].get_ydata()) == pytest.approx([15.0, 30.0, 45.0])  # eval accuracy in %
    assert len(ax_acc.lines[2].get_xdata()) == 2
    assert (ax_loss.get_ylabel(), ax_acc.get_ylabel()) == ("loss", "accuracy (%)")


def test_training_curves_draw_per_step_loss_as_faint_points_behind_the_curves(tmp_path, unsaved):
    recs = [{"epoch": e, "train_loss": 1.0 / e, "eval_loss": 1.2 / e, "train_acc": 0.2 * e, "eval_acc": 0.15 * e,
             "eval_split": "val", "lr": 0.1} for e in (1, 2)]
    steps = [{"epoch_pos": p / 4, "loss": 1.5 - p / 10} for p in range(1, 9)]
    plots.training_curves([("a", recs), ("b", recs)], tmp_path / "c.png", steps=[steps, None])
    fig = unsaved["c.png"]
    ax_loss = fig.axes[0]
    (points,) = ax_loss.collections  # run b has no step log: one scatter, run a's
    np.testing.assert_allclose(points.get_offsets(), [[r["epoch_pos"], r["loss"]] for r in steps])
    assert points.get_alpha() < 0.5 and points.get_zorder() < min(line.get_zorder() for line in ax_loss.lines)
    assert points.get_facecolor()[0][:3] == pytest.approx(matplotlib_rgb(ax_loss.lines[0].get_color()))
    assert "a train, per step" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(ax_loss.lines) == 4  # the epoch curves are all still there


def matplotlib_rgb(color):
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def test_feature_grid_fits_the_channels_on_one_colour_scale(tmp_path, unsaved):
    assert [plots.grid_shape(c) for c in (1, 2, 6, 10, 16)] == [(1, 1), (1, 2), (2, 3), (3, 4), (4, 4)]
    act = np.random.default_rng(0).normal(size=(10, 5, 5)).astype(np.float32)
    act[3] *= 10  # one loud channel: on a shared scale the others look quieter, as they are
    plots.feature_grid(act, "t", tmp_path / "g.png", channels=16)
    fig = unsaved["g.png"]
    panels = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(panels) == 10 and len(fig.axes) == 11  # no empty cells: 10 maps and one colorbar
    assert {im.get_clim() for ax in panels for im in ax.images} == {(float(act.min()), float(act.max()))}
    assert len(bars) == 1 and "one scale" in bars[0].get_ylabel()
    assert [ax.get_title() for ax in panels] == [f"ch {i}" for i in range(10)]
    plots.feature_grid(act[:6], "six", tmp_path / "six.png")  # lenet's first block: 2 x 3
    assert sum(1 for ax in unsaved["six.png"].axes if ax.images) == 6 and len(unsaved["six.png"].axes) == 7


def test_per_class_bar_draws_each_class_and_the_mean(tmp_path, drawn):
    plots.per_class_bar({"cat": 0.5, "dog": 0.75, "ship": None}, tmp_path / "pc.png")
    (ax,) = drawn["pc.png"].axes
    assert [b.get_height() for b in ax.patches] == [50.0, 75.0, 0.0]
    assert ax.patches[2].get_hatch() == "//"  # no test images: a hatched gap, not a 0% bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "ship"]
    (mean_line,) = ax.lines
    assert list(mean_line.get_ydata()) == [62.5, 62.5]  # mean over the classes that have images


def test_sample_grid_labels_truth_and_prediction_and_marks_mistakes(tmp_path, drawn):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    plots.sample_grid(images, [0, 1, 2, 0, 1, 2], [0, 2, 2, 0, 1, 0], ["cat", "dog", "ship"], tmp_path / "s.png", "t")
    axes = drawn["s.png"].axes
    assert len(axes) == 8  # 2 rows x 4; the last two stay empty
    shown = [ax for ax in axes if ax.images]
    assert len(shown) == 6 and not axes[6].images and not axes[7].images
    assert shown[1].get_title() == "GroundTruth: dog\nPredicted: ship"
    colours = [ax.title.get_color() for ax in shown]
    assert colours == ["black", "red", "black", "black", "black", "red"]
    np.testing.assert_array_equal(shown[3].images[0].get_array(), images[3])
    _png(tmp_path / "s.png")


def test_per_class_and_confusion(tmp_path):
    _png(plots.per_class_bar({"cat": 0.5, "dog": 0.75, "ship": None}, tmp_path / "pc.png"))
    names = [f"c{i}" for i in range(12)]
    cm = np.diag(np.arange(1, 13)) + 1
    _png(plots.confusion_heatmap(cm.tolist(), names, tmp_path / "cm.png"))
    _png(plots.confusion_heatmap(np.eye(100, dtype=int).tolist(), [str(i) for i in range(100)], tmp_path / "cm100.png"))


def _fake_run(path, acc):
    path.mkdir(parents=True)
    recs = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": acc * e / 3, "eval_split": "test", "eval_loss": 2.2 / e,
             "eval_acc": acc * e / 3.2, "elapsed_s": 5.0 * e} for e in (1, 2, 3)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_plot_cli_draws_the_step_log_and_takes_threads(tmp_path, unsaved):
    from cifarbench.backends.numpy_backend.arrays import blas_threads

    _fake_run(tmp_path / "a", 0.9)
    (tmp_path / "a" / "steps.jsonl").write_text("".join(
        json.dumps({"epoch_pos": p / 2, "loss": 2.0 - p / 10}) + "\n" for p in range(1, 7)))
    before = blas_threads()
    try:
        res = CliRunner().invoke(app, ["plot", str(tmp_path / "a"), "--threads", "1"])
        assert res.exit_code == 0, res.output
        assert before is None or blas_threads() == 1
    finally:
        if before is not None:
            blas_threads(before)
    (points,) = unsaved["curves.png"].axes[0].collections
    assert len(points.get_offsets()) == 6
    assert CliRunner().invoke(app, ["plot", str(tmp_path / "a"), "--threads", "0"]).exit_code == 2


def test_plot_cli(tmp_path):
    _fake_run(tmp_path / "a", 0.9)
    _fake_run(tmp_path / "b", 0.6)
    runner = CliRunner()
    res = runner.invoke(app, ["plot", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    _png(tmp_path / "a" / "curves.png")
    res = runner.invoke(app, ["plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "both.png")])
    assert res.exit_code == 0, res.output
    _png(tmp_path / "both.png")
    res = runner.invoke(app, ["plot", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "metrics.jsonl" in res.output


def _checkpoint(tmp_path, in_channels, classes, model="cnn"):
    """An npz data set and a checkpoint of an untrained cnn for it (no training needed to draw maps)."""
    from cifarbench.checkpoint import model_metadata, save_checkpoint
    from cifarbench.models import create_spec, init_params

    rng = np.random.default_rng(0)
    npz = tmp_path / f"tiny{classes}.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (4, 16, 16, in_channels), dtype=np.uint8), y_train=np.arange(4) % classes,
             x_test=rng.integers(0, 256, (6, 16, 16, in_channels), dtype=np.uint8), y_test=np.arange(6) % classes)
    spec = create_spec(model, in_channels, 16, classes)
    meta = model_metadata(model, f"npz:{npz}", classes, in_channels, 16, [f"k{i}" for i in range(classes)],
                          (0.5,) * in_channels, (0.25,) * in_channels, "torch")
    save_checkpoint(tmp_path / f"run{classes}", init_params(spec, 0), meta)
    return tmp_path / f"run{classes}", spec


@pytest.mark.parametrize("in_channels,classes", [(3, 100), (1, 10)])
def test_activations_cli(tmp_path, in_channels, classes):
    run, spec = _checkpoint(tmp_path, in_channels, classes)
    out = tmp_path / "act"
    res = CliRunner().invoke(app, ["activations", str(run), "--backend", "numpy", "--image-index", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    names = ["original"] + list(spec.capture_points)
    for n in names:
        _png(out / f"{n}.png")
    res = CliRunner().invoke(app, ["activations", str(run), "--backend", "numpy", "--image-index", "99", "-o", str(out)])
    assert res.exit_code == 2 and "out of range" in res.output


def test_activations_threads_and_help_name_the_models_capture_points(tmp_path, unsaved):
    from cifarbench.backends.numpy_backend.arrays import blas_threads

    run, spec = _checkpoint(tmp_path, 3, 10, "lenet")
    assert spec.capture_points == ("block1", "block2")
    before = blas_threads()
    if before is None:
        pytest.skip("no BLAS thread control reachable here")
    try:
        res = CliRunner().invoke(app, ["activations", str(run), "--backend", "numpy", "--threads", "1",
                                       "--image-index", "0", "--channels", "2", "-o", str(tmp_path / "act")])
        assert res.exit_code == 0, res.output
    finally:
        blas_threads(before)
    for name in spec.capture_points:  # the backend ran on the threads asked for (its name is in the title)
        assert unsaved[f"{name}.png"]._suptitle.get_text().endswith(", 1 thread)")
    assert [len(unsaved[f"{n}.png"].axes) for n in spec.capture_points] == [3, 3]  # 2 maps, 1 colorbar: no empty cell
    text = " ".join(CliRunner().invoke(app, ["activations", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "four" not in text and "lenet 2" in text
