"""mikecvet/cnn's four-panel bench comparison (his viz.py showed it; here it is a PNG), from .bench.out
records (``report.benchout``): one colour per record, the same position in every panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cifarbench.report import plots

# the step phases of the comparison chart's third panel, as .bench.out keys (mikecvet's "inference"
# is the forward pass; his "backprop", backward + optimizer, is drawn only for a record without the split)
PHASE_BARS = (("data", "data"), ("inference", "forward"), ("backward", "backward"), ("optimizer", "optimizer"),
              ("backprop", "backward + optimizer"))


def bench_comparison(records: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """mikecvet's four-panel comparison of .bench.out records (``report.benchout.parse``), one colour per
    record: 1. training time intervals (min, mean, max): per epoch when every record has epochs, else per
    batch; 2. test pass time; 3. per-batch step phases in µs per image (avg, whiskers min–max); 4. accuracy
    and loss over epochs when the records have them, else training images/s from the mean step time."""
    plt = plots._plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(4, 1, figsize=(10, 17))
    labels = _unique([r["label"] for r in records])
    records = [{**r, "label": lbl} for r, lbl in zip(records, labels)]
    colors = [f"C{i % 10}" for i in range(len(records))]
    _time_intervals(axes[0], records, colors)
    _test_times(axes[1], records, colors)
    _phase_bars(axes[2], records)
    if any(r["accuracy"] or r["loss"] for r in records):
        ax, twin = axes[3], axes[3].twinx()
        for r, c in zip(records, colors):
            if r["accuracy"]:
                ax.plot(range(1, len(r["accuracy"]) + 1), r["accuracy"], marker="x", color=c, label=f"{r['label']} accuracy")
            if r["loss"]:
                twin.plot(range(1, len(r["loss"]) + 1), r["loss"], marker="o", linestyle="--", color=c,
                          label=f"{r['label']} loss")
        ax.set_title("Accuracy (solid, left) and training loss (dashed, right) over epochs")
        ax.set_xlabel("epoch")
        ax.set_ylabel("evaluation accuracy (%)")
        twin.set_ylabel("training loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [h for a in (ax, twin) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper center",  # below, off the curves
                  bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    else:
        ax = axes[3]
        ips = [(i, c, r["batch_size"] / (r["ranges"]["step"]["batch"][1] / 1e6))
               for i, (r, c) in enumerate(zip(records, colors))
               if r["batch_size"] and "step" in r["ranges"] and r["ranges"]["step"]["batch"][1] > 0]
        bars = ax.bar([i for i, _, _ in ips], [v for _, _, v in ips], color=[c for _, c, _ in ips])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for _, _, v in ips], fontsize=8)
        ax.set_xticks(range(len(records)), labels)
        ax.set_title("Training throughput (images / s at the mean fused step)")
        ax.set_ylabel("images / s")
        _no_data(ax, ips, "no fused-step timing in these records")
    for ax in axes[:3].tolist() + ([axes[3]] if not any(r["accuracy"] for r in records) else []):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title or "cifarbench bench comparison: " + ", ".join(labels), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    return plots._save(fig, path)


def _unique(labels: Sequence[str]) -> list[str]:
    """The labels, a repeated one numbered (#2, #3, ...) so that every record keeps its own bar."""
    seen: dict[str, int] = {}
    out = []
    for lbl in labels:
        seen[lbl] = seen.get(lbl, 0) + 1
        out.append(lbl if seen[lbl] == 1 else f"{lbl} #{seen[lbl]}")
    return out


def _no_data(ax, items, text: str) -> None:
    if not items:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _time_intervals(ax, records, colors) -> None:
    epochs = all(r["epoch_s"] for r in records)
    items = []
    for i, (r, c) in enumerate(zip(records, colors)):
        if epochs:
            lo, avg, hi = r["epoch_s"]
        elif "step" in r["ranges"] and "batch" in r["ranges"]["step"]:
            lo, avg, hi = (v / 1000 for v in r["ranges"]["step"]["batch"])
        else:
            continue
        ax.errorbar(i, avg, yerr=[[avg - lo], [hi - avg]], fmt="o", capsize=5, color=c, label=r["label"])
        items.append(i)
    ax.set_xticks(range(len(records)), [r["label"] for r in records])
    bs = sorted({r["batch_size"] for r in records if r["batch_size"]})
    unit = "epoch" if epochs else "training step (fused)"
    ax.set_title(f"Training time intervals per {unit}, batch {', '.join(map(str, bs)) or '?'} (min, mean, max)")
    ax.set_ylabel("time (s)" if epochs else "time (ms)")
    ax.set_xlim(-0.5, len(records) - 0.5)
    _no_data(ax, items, "no epoch or step timing in these records")


def _test_times(ax, records, colors) -> None:
    have = [(i, r, c) for i, (r, c) in enumerate(zip(records, colors)) if r["test_ms"] is not None]
    bars = ax.bar([i for i, _, _ in have], [r["test_ms"] for _, r, _ in have], color=[c for _, _, c in have])
    ax.bar_label(bars, labels=[f"{r['test_ms']:,.0f} ms" + (f"\n{r['test_images']:,} images" if r["test_images"] else "")
                               for _, r, _ in have], fontsize=8)
    ax.set_xticks(range(len(records)), [r["label"] for r in records])
    ax.set_title("Test pass processing time (batch image classification)")
    ax.set_ylabel("time (ms)")
    ax.margins(y=0.25)
    _no_data(ax, have, "no test timing in these records")


def _phase_bars(ax, records) -> None:
    shown = [(key, name) for key, name in PHASE_BARS
             if any(key in r["ranges"] and "image" in r["ranges"][key] and
                    (key != "backprop" or "backward" not in r["ranges"]) for r in records)]
    width = 0.8 / max(len(shown), 1)
    x = np.arange(len(records))
    for j, (key, name) in enumerate(shown):
        vals = [r["ranges"].get(key, {}).get("image") if key != "backprop" or "backward" not in r["ranges"] else None
                for r in records]
        avg = np.array([v[1] if v else np.nan for v in vals], float)
        err = np.array([[v[1] - v[0], v[2] - v[1]] if v else [0, 0] for v in vals], float).T
        ax.bar(x + (j - (len(shown) - 1) / 2) * width, avg, width, yerr=err, capsize=3, label=name,
               color=f"C{j}", alpha=0.85)
    ax.set_xticks(x, [r["label"] for r in records])
    ax.set_xlim(-0.5, len(records) - 0.5)
    ax.set_title("Per-batch step phases (bar: avg, whiskers: min–max; device synchronised at each boundary)")
    ax.set_ylabel("µs per image")
    if shown:
        ax.legend(fontsize=8, ncol=len(shown))
    _no_data(ax, shown, "no per-phase timing in these records")
