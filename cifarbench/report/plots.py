"""PNG charts with matplotlib, imported lazily on the Agg backend (no display needed).

Every function takes plain data (dicts, lists, NumPy arrays) and a path, writes one PNG and
returns the path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DPI = 120


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Through the atomic writer: a reader, or a crash, sees the old PNG or the new one, never half."""
    from cifarbench import atomic

    path = Path(path)

    def write(fh) -> None:
        fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight")
        atomic.kill_point("png")  # tests: a kill here leaves the old image

    try:
        atomic.sweep_own_temp(path)  # what a killed save of this image left
        atomic.write_with(path, write)
    finally:
        _plt().close(fig)
    return path


def row_label(row: dict[str, Any]) -> str:
    return f"{row['backend']} {row['device']} {row['model']} {row['precision']} bs{row['batch_size']}"


def throughput_bars(rows: Sequence[dict[str, Any]], path: str | Path, key: str = "train_ips",
                    title: str = "training throughput", unit: str = "images / s") -> Path:
    """Horizontal bars at the median, whiskers from min to max over the timed windows."""
    plt = _plt()
    rows = [r for r in rows if (r.get(key) or {}).get("n")]
    med = np.array([r[key]["median"] for r in rows], dtype=float)
    lo = med - np.array([r[key]["min"] for r in rows], dtype=float)
    hi = np.array([r[key]["max"] for r in rows], dtype=float) - med
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.5 * max(len(rows), 1)))
    y = np.arange(len(rows))
    ax.barh(y, med, xerr=np.vstack([lo, hi]) if len(rows) else None, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_yticks(y, [row_label(r) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} (bar: median, whiskers: min–max)")
    ax.set_title(title)
    for yi, m, h in zip(y, med, hi):  # the value right of the whisker, not under it
        ax.text(m + h, yi - 0.3, f" {m:,.1f}" if m < 100 else f" {m:,.0f}", va="center", ha="left", fontsize=8)
    return _save(fig, path)


def accuracy_vs_time(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]], path: str | Path,
                     target: float | None = None) -> Path:
    """curves: (label, elapsed seconds, accuracy in [0, 1]) per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, t, acc in curves:
        ax.plot(t, [100 * a for a in acc], marker="o", markersize=3, label=label)
    if target is not None:
        ax.axhline(100 * target, color="gray", linestyle="--", linewidth=1, label=f"target {100 * target:g}%")
    ax.set_xlabel("wall-clock time (s)")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("accuracy vs time")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def run_title(label: str, recs: Sequence[dict[str, Any]], config: dict[str, Any] | None) -> str:
    """'name: model on dataset, val 91.23%' (the final epoch's evaluation)."""
    cfg = config or {}
    what = " on ".join(str(cfg[k]) for k in ("model", "dataset") if cfg.get(k))
    last = recs[-1] if recs else {}
    acc = f"{_split(recs)} {100 * last['eval_acc']:.2f}%" if last.get("eval_acc") is not None else ""
    return f"{label}: " + ", ".join(p for p in (what, acc) if p)


def training_curves(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str | Path,
                    configs: Sequence[dict[str, Any] | None] | None = None,
                    steps: Sequence[Sequence[dict[str, Any]] | None] | None = None) -> Path:
    """Loss, accuracy and learning rate per epoch for each run (records as in metrics.jsonl); the title
    names each run's model, data set and final accuracy; legends sit below the panels, off the curves.
    ``steps`` (rows of each run's steps.jsonl, or None) adds the per-step training loss as faint points
    behind the loss curves, at their position in the epoch (epoch e ends at x = e)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.6))
    configs = list(configs or [None] * len(runs))
    steps = list(steps or [None] * len(runs))
    fig.suptitle("\n".join(run_title(label, recs, cfg) for (label, recs), cfg in zip(runs, configs)), fontsize=10)
    for (label, recs), step_rows in zip(runs, steps):
        ep = [r["epoch"] for r in recs]
        line = ax_loss.plot(ep, [r.get("train_loss") for r in recs], marker="o", markersize=3, label=f"{label} train",
                            zorder=3)
        color = line[0].get_color()
        if step_rows:
            ax_loss.scatter([r["epoch_pos"] for r in step_rows], [r["loss"] for r in step_rows], s=8, alpha=0.3,
                            color=color, linewidths=0, zorder=1, label=f"{label} train, per step")
        ax_loss.plot(ep, [r.get("eval_loss") for r in recs], linestyle="--", color=color, label=f"{label} {_split(recs)}")
        ax_acc.plot(ep, [100 * r.get("train_acc", math.nan) for r in recs], marker="o", markersize=3, color=color,
                    label=f"{label} train")
        ax_acc.plot(ep, [100 * r.get("eval_acc", math.nan) for r in recs], linestyle="--", color=color,
                    label=f"{label} {_split(recs)}")
        ax_lr.plot(ep, [r.get("lr", math.nan) for r in recs], marker="o", markersize=3, color=color, label=label)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy (%)"), (ax_lr, "learning rate (last step of the epoch)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles, labels = ax_loss.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    # room in inches for the title lines (one per run) and the legend rows, around 3.6 in of panels
    title_in, legend_in = 0.2 * len(runs) + 0.15, 0.2 * -(-len(labels) // 4) + 0.15
    height = 3.6 + title_in + legend_in
    fig.set_size_inches(15, height)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))  # tight_layout leaves room for the suptitle itself
    return _save(fig, path)


def _split(recs: Sequence[dict[str, Any]]) -> str:
    return recs[-1].get("eval_split", "eval") if recs else "eval"


def per_class_bar(per_class: dict[str, float | None], path: str | Path, title: str = "per-class accuracy") -> Path:
    """Accuracy per class (values in [0, 1]; None = no test images of that class, drawn as a gap)."""
    plt = _plt()
    names = list(per_class)
    vals = [100 * v if v is not None else 0.0 for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
    bars = ax.bar(range(len(names)), vals, color="tab:green")
    for bar, v in zip(bars, per_class.values()):
        if v is None:
            bar.set_hatch("//")
            bar.set_alpha(0.3)
    ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 12 else 30, ha="right",
                  fontsize=7 if len(names) > 30 else 9)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    known = [v for v in per_class.values() if v is not None]
    if known:
        ax.axhline(100 * float(np.mean(known)), color="gray", linestyle="--", linewidth=1, label="class mean")
        ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def confusion_heatmap(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                      title: str = "confusion matrix") -> Path:
    """Rows: true class, columns: predicted; colour = share of the row, counts written when few classes."""
    plt = _plt()
    m = np.asarray(cm, dtype=float)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    side = 3.5 + (0.45 * n if n <= 20 else 0.12 * n)  # CIFAR-100 stays a readable, not a huge, image
    fig, ax = plt.subplots(figsize=(side + 0.5, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ticks = range(n)
    fs = 8 if n <= 20 else 4
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, class_names, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title)
    return _save(fig, path)


def input_image(img: np.ndarray, title: str, path: str | Path) -> Path:
    """A uint8 HWC image (C = 1 or 3), nearest-neighbour so the pixels stay visible."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def sample_grid(images: np.ndarray, truth: Sequence[int], predicted: Sequence[int], class_names: Sequence[str],
                path: str | Path, title: str) -> Path:
    """Test images with ``GroundTruth`` / ``Predicted`` labels (mike7seven's test grid), wrong ones in red."""
    plt = _plt()
    n = len(images)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  interpolation="nearest")
        ok = truth[k] == predicted[k]
        ax.set_title(f"GroundTruth: {class_names[truth[k]]}\nPredicted: {class_names[predicted[k]]}", fontsize=8,
                     color="black" if ok else "red")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def grid_shape(c: int) -> tuple[int, int]:
    """(rows, cols) for c panels: as square as possible, never a whole empty row (6 -> 2 x 3)."""
    cols = math.ceil(math.sqrt(c))
    return math.ceil(c / cols), cols


def feature_grid(act: np.ndarray, title: str, path: str | Path, channels: int = 16) -> Path:
    """The first ``channels`` maps of one (C, H, W) activation, one panel per map (the grid fits the
    count; the cells of a last, partial row are removed), on one colour scale with one colorbar, so
    that a bright panel means a strong response, not only a different per-channel range."""
    plt = _plt()
    if act.ndim == 1:  # a vector capture (after flatten): show it as a strip
        act = act[:, None, None]
    c = min(channels, act.shape[0])
    rows, cols = grid_shape(c)
    shown = act[:c]
    vmin, vmax = float(shown.min()), float(shown.max())
    if vmin == vmax:  # a constant map: a scale of width 0 would draw nothing
        vmin, vmax = vmin - 0.5, vmax + 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + 1.0, 2.2 * rows + 0.3), squeeze=False)
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= c:
            fig.delaxes(ax)
            continue
        ax.axis("off")
        image = ax.imshow(shown[i], cmap="viridis", interpolation="nearest", vmin=vmin, vmax=vmax)
        ax.set_title(f"ch {i}", fontsize=8)
    fig.subplots_adjust(right=0.86)  # a fixed slot for the colorbar: cheaper than re-laying out every panel
    fig.colorbar(image, cax=fig.add_axes((0.89, 0.15, 0.025, 0.7)), label="activation (one scale for all channels)")
    fig.suptitle(title)
    return _save(fig, path)


def bench_charts(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """The PNGs of a bench result: throughput bars, or (training mode) time bars and accuracy vs time."""
    out_dir = Path(out_dir)
    rows = result.get("rows", [])
    if not rows:
        return []
    if result.get("mode") != "training":
        return [throughput_bars(rows, out_dir / "throughput_train.png"),
                throughput_bars(rows, out_dir / "throughput_eval.png", key="eval_ips", title="evaluation throughput")]
    curves = [(f"{row_label(r)} seed {c['seed']}", c["elapsed_s"], c["eval_acc"]) for r in rows for c in r["curves"]]
    target = (result.get("settings") or {}).get("target_acc")
    return [throughput_bars(rows, out_dir / "training_time.png", key="total_time_s", title="total training time",
                            unit="seconds"),
            accuracy_vs_time(curves, out_dir / "accuracy_vs_time.png", target)]
