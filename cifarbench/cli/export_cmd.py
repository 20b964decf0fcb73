"""`cifarbench export`: a run directory -> an original project's checkpoint file, or ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cifarbench.cli._console import info, out_console, print_json

_TARGETS_HELP = (
    "menzhse (cnn -> MLX .npz, cnn-leaky -> torch .pth), mike7seven (resnet18/lenet/lenet-large -> torch .pth; "
    "resnet18/cnn -> MLX .npz), definfo (simplecnn -> .pkl), onnx (any model; input float32 pixels in [0, 1], NCHW)"
)


def export(
    run: Path = typer.Argument(..., help="Run directory (or its model.safetensors) to export.", metavar="RUN"),
    to: str = typer.Option(..., "--to", help=f"Target: {_TARGETS_HELP}."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: in RUN, named <model>-<dataset>-<target>)."),
    framework: Optional[str] = typer.Option(
        None, "--framework", help="torch or mlx, where the original had both (mike7seven resnet18; default torch)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a run's weights in an original project's format (its scripts load them) or as ONNX.

    `cifarbench import FILE --from TARGET` of the file gives back the same weights and test accuracy.
    """
    from cifarbench.exporters import export_run

    done = export_run(run, to, output, framework, overwrite)
    if json_out:
        print_json({"path": str(done.path), "target": done.target, "framework": done.framework, "model": done.model,
                    "dataset": done.dataset, "tensors": done.tensors})
        return
    info(f"exported {done.model} ({done.dataset}) for {done.target} ({done.framework})")
    out_console.print(str(done.path), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
