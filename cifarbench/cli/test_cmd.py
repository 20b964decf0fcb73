"""`cifarbench test`: accuracy, loss, per-class table and confusion matrix of a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from cifarbench.cli._console import info, out_console, print_json, warn


def evaluate_checkpoint(checkpoint: str, dataset: Optional[str], data_dir: Optional[str], backend: str,
                        device: Optional[str], batch_size: int, threads: Optional[int] = None) -> dict:
    """Load a checkpoint on any backend and evaluate it on its (or another) data set's test split."""
    from cifarbench.backends import create_backend, resolve
    from cifarbench.backends.base import TrainOptions
    from cifarbench.checkpoint import check_compatible, load_checkpoint
    from cifarbench.data import load_dataset
    from cifarbench.engine.metrics import evaluate_logits
    from cifarbench.models import create_spec, tv

    ck = load_checkpoint(checkpoint)
    meta = ck.meta
    tv.check_tv_model(meta["model"], resolve(backend, device)[0])
    ds_name = dataset or meta.get("dataset", "cifar10")
    ds = load_dataset(ds_name, data_dir)
    for w in getattr(ds, "warnings", []) or []:
        warn(w)
    spec = create_spec(meta["model"], ds.channels, ds.image_size, ds.num_classes)
    check_compatible(ck.state, spec, f"checkpoint {checkpoint} (model {meta['model']}, {meta['num_classes']} classes)")
    opts = TrainOptions(mean=tuple(meta.get("mean", ds.mean())), std=tuple(meta.get("std", ds.std())),
                        extra={} if threads is None else {"threads": threads})
    be = create_backend(backend, device, opts, 0)
    be.build(spec, ck.state)
    be.set_data("test", ds.x_test, ds.y_test)
    t0 = time.perf_counter()
    logits = be.predict("test", batch_size)
    seconds = time.perf_counter() - t0
    result = evaluate_logits(logits, ds.y_test, ds.class_names)
    result.update(
        checkpoint=str(checkpoint), model=meta["model"], dataset=ds_name, backend=be.name, device=be.device,
        device_name=be.describe(), class_names=list(ds.class_names), test_time_s=seconds,
        trained_on=meta.get("backend"), total_parameters=spec.num_params(),
    )
    return result


def test(
    checkpoint: str = typer.Argument(..., help="Run directory or model.safetensors."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Evaluate on this data set (default: the checkpoint's)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    backend: str = typer.Option("torch", "--backend", help="Any backend: checkpoints are portable."),
    device: Optional[str] = typer.Option(None, "--device"),
    batch_size: int = typer.Option(500, "--batch-size", "-b", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch/NumPy (default: the framework's)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write per-class bars and a confusion heat map here."),
    json_out: bool = typer.Option(False, "--json", help="Print the results (with the confusion matrix) as JSON."),
) -> None:
    """Evaluate a checkpoint: overall and per-class accuracy, loss, confusion matrix."""
    r = evaluate_checkpoint(checkpoint, dataset, data_dir, backend, device, batch_size, threads)
    if plots is not None:
        from cifarbench.report.plots import confusion_heatmap, per_class_bar

        plots.mkdir(parents=True, exist_ok=True)
        per_class_bar(r["per_class_accuracy"], plots / "per_class_accuracy.png")
        confusion_heatmap(r["confusion_matrix"], r["class_names"], plots / "confusion_matrix.png")
        info(f"plots written to {plots}")
    if json_out:
        print_json(r)
        return
    _print_table(r)


def _print_table(r: dict) -> None:
    from rich.table import Table

    table = Table("class", "accuracy", "support", title=f"{r['model']} on {r['dataset']} ({r['device_name']})")
    for i, (name, acc) in enumerate(r["per_class_accuracy"].items()):
        support = sum(r["confusion_matrix"][i])
        table.add_row(name, "-" if acc is None else f"{100 * acc:.2f}%", str(support))
    out_console.print(table)
    out_console.print(
        f"test accuracy {100 * r['accuracy']:.2f}% ({r['correct']}/{r['total']}), loss {r['loss']:.4f}, "
        f"{r['test_time_s']:.2f} s",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("test")(test)
