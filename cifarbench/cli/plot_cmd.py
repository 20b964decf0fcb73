"""`cifarbench plot` (training curves of runs) and `cifarbench activations` (feature maps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cifarbench.cli._console import info
from cifarbench.errors import UsageError


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise UsageError(f"{run_dir}: no metrics.jsonl", hint="pass run directories written by `cifarbench train`")
    try:
        recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON lines: {exc}") from None
    if not recs:
        raise UsageError(f"{path} has no epochs yet")
    return recs


def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories (or metrics.jsonl files)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG path (default: RUN/curves.png, or curves.png for several runs)."),
) -> None:
    """Loss and accuracy per epoch of one or several runs, in one PNG."""
    from cifarbench.report.plots import training_curves

    data = [(r.name if r.is_dir() else r.parent.name, _records(r)) for r in runs]
    configs = [_config(r if r.is_dir() else r.parent) for r in runs]
    if output is None:
        output = (runs[0] if runs[0].is_dir() else runs[0].parent) / "curves.png" if len(runs) == 1 else Path("curves.png")
    info(f"wrote {escape(str(training_curves(data, output, configs)))}")


def _config(run_dir: Path) -> dict | None:
    """The run's config.yaml (model and data set for the title), or None."""
    import yaml

    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def activations(
    checkpoint: Path = typer.Argument(..., help="Run directory or model.safetensors."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Backend to run the model on (default: the one that trained it)."),
    device: Optional[str] = typer.Option(None, "--device"),
    image_index: Optional[int] = typer.Option(None, "--image-index", help="Test image (default: a random one from --seed)."),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    output: Path = typer.Option(Path("activations"), "--output", "-o", help="Directory for the PNGs."),
    channels: int = typer.Option(16, "--channels", help="Feature maps per grid."),
) -> None:
    """Feature-map grids at the model's four capture points for one test image, plus the input."""
    from cifarbench.report.activations import render_activations

    paths = render_activations(checkpoint, backend, device, image_index, seed, data_dir, output, channels)
    info(f"wrote {escape(', '.join(str(p) for p in paths))}")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
    app.command("activations")(activations)
