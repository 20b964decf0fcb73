"""`cifarbench import`: bring a checkpoint of one of the original projects into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cifarbench.cli._console import info, out_console, print_json, warn, plain

_SOURCES_HELP = (
    "menzhse (mlx-cifar-10-cnn .npz/.safetensors, torch-cifar-10-cnn .pth), mike7seven (ResNet-18/SmallCNN/LeNet .pth or MLX .npz), "
    "definfo (SimpleCNN/ResNet32 .pkl)"
)


def import_(
    file: Path = typer.Argument(..., help="The original project's checkpoint (.npz, .safetensors, .pth or .pkl)."),
    source: str = typer.Option(..., "--from", help=f"Which project wrote it: {_SOURCES_HELP}."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="cifarbench model name (default: inferred from the file)."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="cifar10, cifar100 or mnist (default: from the file name / class count)."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory to write (default runs/<model>-<dataset>-<source>-<file>)."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Allow .pkl files and .pth files that need full unpickling (they can run code)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert an original project's checkpoint; `cifarbench test RUN_DIR` then reproduces its accuracy.

    Except definfo's ResNet32: its BatchNorm normalised over the wrong axis with the statistics of each
    test batch and kept no running statistics, so the imported network (running mean 0, var 1) predicts
    differently (about 96% argmax agreement) until it is fine-tuned briefly.
    """
    from cifarbench.importers import import_checkpoint

    run_dir, conv = import_checkpoint(file, source, model, dataset, output, trust_pickle)
    for note in conv.notes:
        warn(note)
    if json_out:
        print_json({
            "run_dir": str(run_dir), "model": conv.model, "dataset": conv.dataset, "source": conv.source,
            "framework": conv.framework, "mean": list(conv.mean), "std": list(conv.std), "notes": conv.notes,
            "tensors": len(conv.state),
        })
        return
    info(plain(f"imported {file} ({conv.source}, {conv.framework}) as {conv.model} on {conv.dataset}; "
               f"input normalisation mean {conv.mean[0]:g} std {conv.std[0]:g}"))
    out_console.print(str(run_dir), highlight=False, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
