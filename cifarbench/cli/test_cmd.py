"""`cifarbench test`: accuracy, loss, per-class table and confusion matrix of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cifarbench.cli._console import info, out_console, print_json, warn, plain


def test(
    checkpoint: str = typer.Argument(..., help="Run directory or model.safetensors."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Evaluate on this data set (default: the checkpoint's)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    backend: str = typer.Option("torch", "--backend", help="Any backend: checkpoints are portable."),
    device: Optional[str] = typer.Option(None, "--device"),
    batch_size: int = typer.Option(500, "--batch-size", "-b", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch/NumPy (default: the framework's)."),
    plots: Optional[Path] = typer.Option(
        None, "--plots", help="Write per-class bars, a confusion heat map and a grid of sample predictions here."),
    samples: int = typer.Option(16, "--samples", min=1, max=64, help="Test images in the --plots sample grid (seeded choice)."),
    limit_eval: Optional[int] = typer.Option(
        None, "--limit-eval", min=1, help="Evaluate a seeded, class-stratified subset of N test images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit-eval subset."),
    fast_dev_run: bool = typer.Option(False, "--fast-dev-run", help="Smoke test: 2 batches of 8 test images."),
    json_out: bool = typer.Option(False, "--json", help="Print the results (with the confusion matrix) as JSON."),
) -> None:
    """Evaluate a checkpoint: overall and per-class accuracy, loss, confusion matrix."""
    from cifarbench.engine.evaluate import evaluate_with_data

    if fast_dev_run:
        batch_size, limit_eval = 8, 16
    r, x_test, y_test, logits = evaluate_with_data(checkpoint, dataset, data_dir, backend, device, batch_size, threads,
                                      warn=warn, limit=limit_eval, seed=seed)
    if plots is not None:
        import numpy as np

        from cifarbench.report.plots import confusion_heatmap, per_class_bar, sample_grid

        plots.mkdir(parents=True, exist_ok=True)
        per_class_bar(r["per_class_accuracy"], plots / "per_class_accuracy.png")
        confusion_heatmap(r["confusion_matrix"], r["class_names"], plots / "confusion_matrix.png")
        pick = np.sort(np.random.default_rng(0).choice(len(y_test), min(samples, len(y_test)), replace=False))
        sample_grid(x_test[pick], y_test[pick], logits[pick].argmax(1), r["class_names"],
                    plots / "samples.png", f"{r['model']} on {r['dataset']}: {len(pick)} test images "
                    f"(accuracy {100 * r['accuracy']:.2f} % overall)")
        info(plain(f"plots written to {plots}"))
    if json_out:
        print_json(r)
        return
    _print_table(r)


def _print_table(r: dict) -> None:
    from rich.table import Table

    table = Table("class", "accuracy", "support", title=plain(f"{r['model']} on {r['dataset']} ({r['device_name']})"))
    for i, (name, acc) in enumerate(r["per_class_accuracy"].items()):
        support = sum(r["confusion_matrix"][i])
        table.add_row(plain(name), "-" if acc is None else f"{100 * acc:.2f}%", str(support))
    out_console.print(table)
    out_console.print(
        f"test accuracy {100 * r['accuracy']:.2f}% ({r['correct']}/{r['total']}), loss {r['loss']:.4f}, "
        f"{r['test_time_s']:.2f} s",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("test")(test)
