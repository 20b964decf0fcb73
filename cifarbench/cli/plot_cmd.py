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


def _steps(run_dir: Path) -> list[dict] | None:
    """The run's per-step log (steps.jsonl), or None when it has none (older runs) or it is unreadable."""
    try:
        text = (run_dir / "steps.jsonl").read_text()
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()] or None
    except (OSError, json.JSONDecodeError):
        return None


def _bench_records(path: Path) -> list[dict] | None:
    """The .bench.out records of a bench result (its directory or bench.json) or of a .bench.out file;
    None when ``path`` is neither (a training run)."""
    from cifarbench.report import benchout, load_result

    if (path.is_dir() and (path / "bench.json").is_file()) or (path.is_file() and path.suffix == ".json"):
        return benchout.from_result(load_result(path))
    if path.is_file() and path.name.endswith(".out"):
        return benchout.read(path)
    return None


def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories (or metrics.jsonl files); or bench results "
                                      "(directories, bench.json) and mikecvet .bench.out files for the comparison chart."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG path (default: RUN/curves.png, curves.png "
                                          "for several runs, bench_comparison.png for bench results)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for NumPy's BLAS (as train's)."),
) -> None:
    """Loss (with per-step points when the run logged them), accuracy and lr per epoch of one or several runs;
    or mikecvet's 4-panel comparison of bench results."""
    from cifarbench.report.bench_chart import bench_comparison
    from cifarbench.report.plots import training_curves

    _threads(threads)
    bench = [_bench_records(r) for r in runs]
    if any(b is not None for b in bench):
        if not all(b is not None for b in bench):
            raise UsageError("give either training runs or bench results, not both",
                             hint="a bench result is a directory with bench.json, a bench.json, or a .bench.out file")
        path = bench_comparison([rec for b in bench for rec in b], output or Path("bench_comparison.png"))
        info(f"wrote {escape(str(path))}")
        return
    data = [(r.name if r.is_dir() else r.parent.name, _records(r)) for r in runs]
    dirs = [r if r.is_dir() else r.parent for r in runs]
    if output is None:
        output = dirs[0] / "curves.png" if len(runs) == 1 else Path("curves.png")
    path = training_curves(data, output, [_config(d) for d in dirs], [_steps(d) for d in dirs])
    info(f"wrote {escape(str(path))}")


def _threads(threads: Optional[int]) -> None:
    """--threads as train takes it: NumPy's BLAS (what the plots compute with) and torch, when loaded."""
    if threads is None:
        return
    import sys

    from cifarbench.backends.numpy_backend.arrays import blas_threads

    blas_threads(threads)
    if "torch" in sys.modules:  # never imported for this
        sys.modules["torch"].set_num_threads(threads)


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
    channels: int = typer.Option(16, "--channels", help="Feature maps per grid (at most the layer's channels)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch/NumPy (default: the framework's)."),
) -> None:
    """Feature-map grids for one test image at each capture point the model declares (its blocks and
    residual stages, the Group/Residual rows of `cifarbench models --summary NAME`: lenet 2, cnn and resnet18 4), plus the input."""
    from cifarbench.report.activations import render_activations

    paths = render_activations(checkpoint, backend, device, image_index, seed, data_dir, output, channels, threads)
    info(f"wrote {escape(', '.join(str(p) for p in paths))}")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
    app.command("activations")(activations)
