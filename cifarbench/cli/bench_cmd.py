"""`cifarbench bench`: throughput (default) or training-mode (--epochs N) benchmarks, and --compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from cifarbench.cli._console import err_console, info, out_console, plain, print_json, print_wide, warn
from cifarbench.cli.flags import with_recipe_flags
from cifarbench.errors import CifarbenchError, UsageError

# RunConfig fields bench spells itself (matrix axes as comma lists, its own --epochs/--seed meaning, or
# fields bench sets); every other field is a recipe flag, derived from RunConfig in cli/flags.py.
OWN = ("backend", "device", "model", "precision", "batch_size", "epochs", "eval_batch_size", "seed", "output",
       "save_every")
TRAIN_ONLY = ("logger",)  # experiment trackers follow a training run; bench writes its own rows


def _split(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts or None


def _ints(text: Optional[str], flag: str) -> Optional[list[int]]:
    parts = _split(text)
    try:
        return [int(p) for p in parts] if parts else None
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got '{text}'") from None


@with_recipe_flags(exclude=OWN + TRAIN_ONLY)
def bench(
    backend: Optional[str] = typer.Option(None, "--backend", help="Comma list (default: every backend; unavailable ones are listed)."),
    device: Optional[str] = typer.Option(None, "--device", help="Comma list, 'auto' (each backend's best) or 'all'."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Comma list of models (default: the config's, cnn)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Comma list: fp32, bf16, fp16."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", "-b", metavar="LIST", help="Comma list of batch sizes."),
    config: Optional[str] = typer.Option(None, "--config", "-c", metavar="FILE", help="YAML recipe: a path or a bundled name."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Random images of the data set's shape: no download."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed (training mode: seeds seed..seed+K-1)."),
    warmup_steps: int = typer.Option(5, "--warmup-steps", help="Throughput: warm-up steps before the timed windows (compile/JIT; timed and reported apart)."),
    steps: int = typer.Option(20, "--steps", help="Throughput: training steps per timed window."),
    repeats: int = typer.Option(5, "--repeats", help="Throughput: timed windows (min/median/max over them)."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", help="Images per evaluation batch (default: the config's, 1000)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training mode: full runs of N epochs through the trainer."),
    seeds: int = typer.Option(1, "--seeds", help="Training mode: runs per combination (accuracy mean ± std)."),
    target_acc: Optional[float] = typer.Option(None, "--target-acc", help="Training mode: report time to this eval accuracy (0-1)."),
    baseline: Optional[str] = typer.Option(
        None, "--baseline",
        help="Row the others are compared with: 'fastest' (default), 'slowest', 'first', or "
        "backend[:device[:model[:precision[:batch]]]]."),
    eval_images: Optional[int] = typer.Option(
        None, "--eval-images", help="Throughput: images per timed evaluation (default: as many as one training "
        "window, --steps x the largest batch, at most 10,000)."),
    phase_steps: Optional[int] = typer.Option(
        None, "--phase-steps", help="Throughput: steps timed phase by phase after the windows (data, forward, "
        "backward, optimizer per batch: min/avg/max, µs per image; default: --steps; 0: none)."),
    bench_out: Optional[Path] = typer.Option(
        None, "--bench-out", metavar="FILE", help="Also append the results to FILE in mikecvet/cnn's .bench.out "
        "layout (e.g. torch.cpu.cnn.bench.out), which `cifarbench plot` and his viz.py read."),
    fast_dev_run: bool = typer.Option(
        False, "--fast-dev-run", help="Smoke test: throughput 1 warm-up step, 1 window of 2 steps; training mode "
        "1 epoch of 2 steps on a 2-batch subset; writes nothing unless -o is given."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Run directory for bench.json/.csv/.md, charts and run_log.json (default runs/bench-TIME)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    compare_files: Optional[tuple[Path, Path]] = typer.Option(None, "--compare", help="Compare two bench.json files: A B."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not record the results in the results database."),
    results_db: Optional[str] = typer.Option(None, "--results-db", help="Results database URL or SQLite path (default: $CIFARBENCH_RESULTS_DB, else the user data dir)."),
    recipe: dict = None,
) -> None:
    """Benchmark backends x devices x models; the relative column is speed against the baseline row."""
    if compare_files:
        _compare(*compare_files, json_out)
        return
    from cifarbench.bench import BenchSettings, run_bench
    from cifarbench.cli.progress import PlainReporter

    overrides = dict(recipe)
    if seed is not None:
        overrides["seed"] = seed
    if eval_batch_size is not None:
        overrides["eval_batch_size"] = eval_batch_size
    if epochs is not None and epochs < 1:
        raise UsageError("--epochs must be at least 1")
    settings = BenchSettings(
        backends=_split(backend), devices=_split(device), models=_split(model), precisions=_split(precision),
        batch_sizes=_ints(batch_size, "--batch-size"), config_file=config, overrides=overrides, synthetic=synthetic,
        warmup_steps=warmup_steps, steps=steps, repeats=repeats, eval_batch_size=eval_batch_size, epochs=epochs,
        seeds=seeds, target_acc=target_acc, baseline=baseline, eval_images=eval_images, phase_steps=phase_steps,
    )
    if bench_out is not None and bench_out.is_dir():
        raise UsageError(f"--bench-out {bench_out} is a directory; give a file, e.g. {bench_out / 'torch.cpu.cnn.bench.out'}")
    write = True
    if fast_dev_run:
        write = output is not None
        no_record = no_record or not write
        settings.warmup_steps, settings.steps, settings.repeats = 1, 2, 1
        settings.phase_steps = 2 if phase_steps is None else min(phase_steps, 2)
        if settings.epochs:
            settings.epochs = 1
            batch = max(settings.batch_sizes or [8])
            settings.overrides.update(max_steps=2, limit_train=2 * batch, limit_eval=2 * batch)
    if output is None and write:  # every bench run keeps its results and run_log.json in a run directory
        from datetime import datetime

        output = Path("runs") / f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    result = run_bench(settings, PlainReporter(), out_dir=output)
    _show(result, to_stderr=json_out)
    if result["rows"] and write:
        _write(result, output)
        if not no_record:  # never fails the run: warns instead
            from cifarbench.results import record_run

            record_run(output / "bench.json", results_db, "bench", warn, info)
    if result["rows"] and bench_out is not None:  # asked for by name: written even by --fast-dev-run
        from cifarbench.report import benchout

        info("appended " + escape(str(benchout.append(bench_out, result))))
    if json_out:
        print_json(result)
    if not result["rows"]:  # a runtime outcome (exit 1): the request was valid, this machine could not run it
        raise CifarbenchError("nothing could run here; see the reasons above")


def _show(result: dict[str, Any], to_stderr: bool) -> None:
    from rich.table import Table

    from cifarbench.report import format_table, skipped_lines

    headers, cells = format_table(result)
    table = Table(*headers, title=f"cifarbench bench ({result['mode']})", header_style="bold")
    for row in cells:
        table.add_row(*(plain(c) for c in row))
    print_wide(table, err_console if to_stderr else out_console)
    phases = phase_table(result)
    if phases is not None:
        print_wide(phases, err_console if to_stderr else out_console)
    for line in skipped_lines(result):
        info(f"[dim]not run:[/] {escape(line)}")
    if result.get("baseline"):
        info(plain(f"relative = {result['relative_meaning']}; baseline {result['baseline']}"))


def phase_table(result: dict[str, Any]):
    """The per-batch phase table (rich), or None when no row timed its phases."""
    from rich.table import Table

    from cifarbench.report.tables import PHASE_HEADERS, phase_cells

    cells = phase_cells(result)
    if not cells:
        return None
    table = Table(*PHASE_HEADERS, title="per-batch step phases (device synchronised at each boundary)",
                  header_style="bold")
    for i, row in enumerate(cells):
        table.add_row(*(plain(c) for c in row), end_section=i + 1 < len(cells) and cells[i + 1][0] != "")
    return table


def _write(result: dict[str, Any], out_dir: Path) -> None:
    from cifarbench.atomic import write_json as atomic_write_json
    from cifarbench.report import write_outputs
    from cifarbench.report.plots import bench_charts

    paths = write_outputs(result, out_dir)
    paths += bench_charts(result, out_dir)
    log = {"command": "bench", "mode": result["mode"], "created": result["created"], "settings": result["settings"],
           "config": result["config"], "baseline": result["baseline"], "results": "bench.json",
           "fingerprint_id": result["fingerprint_id"], "fingerprint": result["fingerprint"]}
    atomic_write_json(out_dir / "run_log.json", log)
    info("wrote " + escape(", ".join(str(p) for p in paths + [out_dir / "run_log.json"])))


def _compare(path_a: Path, path_b: Path, json_out: bool) -> None:
    from rich.table import Table

    from cifarbench.bench import compare
    from cifarbench.report import load_result

    res = compare(load_result(path_a), load_result(path_b))
    if not res["fingerprints_match"]:
        fields = ", ".join(res["differing_fields"]) or "unknown fields"
        warn(f"fingerprints differ ({res['fingerprint_a']} vs {res['fingerprint_b']}: {fields}); "
             "the ratio mixes machine/software changes with what you changed")
    table = Table("backend", "device", "model", "precision", "batch", f"A: {res['metric']}", f"B: {res['metric']}",
                  "B vs A", title=plain(f"{path_a} vs {path_b}"), header_style="bold")
    fmt = lambda x: "-" if x is None else f"{x:,.1f}"  # noqa: E731
    for r in res["rows"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        table.add_row(*(plain(c) for c in (r["backend"], r["device"], r["model"], r["precision"], r["batch_size"])),
                      fmt(r["a"]), fmt(r["b"]), ratio)
    print_wide(table, err_console if json_out else out_console)
    info("B vs A > 1 means B is faster")
    if json_out:
        print_json(res)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
