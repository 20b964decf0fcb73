"""`cifarbench train`: one training run, flags > config file > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cifarbench.cli._console import info, out_console, print_json
from cifarbench.errors import UsageError

# Flag name -> RunConfig field, for every option that overrides the config.
OVERRIDES = (
    "model", "dataset", "data_dir", "epochs", "batch_size", "eval_batch_size", "lr", "opt", "momentum", "nesterov",
    "weight_decay", "sched", "warmup_epochs", "min_lr", "label_smoothing", "precision", "seed", "output", "backend",
    "device", "val_split", "augment", "normalize", "compile", "compile_mode", "loader", "memory_limit",
    "threads", "muon_lr", "muon_momentum", "head_lr_scale", "whiten_bias_epochs",
)


def train(
    model_arg: Optional[str] = typer.Argument(None, metavar="[MODEL]", help="Model name (see `cifarbench models`)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (same as the argument)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML recipe: a path or a bundled name."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="cifar10, cifar100, mnist, fashion-mnist, synthetic, npz:PATH."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Dataset cache directory."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (the peak for onecycle)."),
    opt: Optional[str] = typer.Option(None, "--opt", help="sgd, adam, adamw, muon (Muon for conv filters, SGD for the rest)."),
    momentum: Optional[float] = typer.Option(None, "--momentum"),
    nesterov: Optional[bool] = typer.Option(None, "--nesterov/--no-nesterov"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    sched: Optional[str] = typer.Option(None, "--sched", "--scheduler", help="constant, step, cosine, onecycle, triangle, linear."),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs"),
    min_lr: Optional[float] = typer.Option(None, "--min-lr"),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, bf16, fp16."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Run directory."),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch, mlx, numpy, cupy, jax, or cpu/cuda/mps."),
    device: Optional[str] = typer.Option(None, "--device", help="Backend device (auto: the fastest available)."),
    val_split: Optional[int] = typer.Option(None, "--val-split", help="Hold out N training images for validation."),
    augment: Optional[str] = typer.Option(None, "--augment", help="crop, flip, crop+flip or none."),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="dataset, half or none."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the step (warm-up reported)."),
    compile_mode: Optional[str] = typer.Option(
        None, "--compile-mode", help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune; implies --compile."),
    loader: Optional[str] = typer.Option(None, "--loader", help="memory or mlx-data (MLX only)."),
    memory_limit: Optional[float] = typer.Option(None, "--memory-limit", help="MLX memory limit in GB."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch/NumPy (default: the framework's; 1 is often fastest on a busy machine)."),
    muon_lr: Optional[float] = typer.Option(None, "--muon-lr", help="--opt muon: the filters' lr where the schedule is at --lr."),
    muon_momentum: Optional[float] = typer.Option(None, "--muon-momentum", help="--opt muon: the filters' nesterov momentum."),
    head_lr_scale: Optional[float] = typer.Option(None, "--head-lr-scale", help="lr factor of the Linear weights (decay / factor)."),
    whiten_bias_epochs: Optional[float] = typer.Option(
        None, "--whiten-bias-epochs", help="Whitening conv bias: lr decays to 0 over N epochs, then frozen (0: never)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    list_configs: bool = typer.Option(False, "--list-configs", help="List the bundled recipes and exit."),
    json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not record the run in the results database."),
    results_db: Optional[str] = typer.Option(None, "--results-db", help="Results database URL or SQLite path (default: $CIFARBENCH_RESULTS_DB, else the user data dir)."),
) -> None:
    """Train a model; writes a run directory (config, metrics, checkpoint, run_log.json)."""
    from cifarbench.config import build_config, dump_config, list_configs as bundled

    if list_configs:
        for name, desc, _ in bundled():
            out_console.print(f"[bold]{name:28s}[/] {desc}", highlight=False)
        return
    if model_arg and model and model_arg != model:
        raise UsageError(f"model given twice: '{model_arg}' and --model '{model}'")
    values = dict(locals())
    values["model"] = model_arg or model
    overrides = {k: values[k] for k in OVERRIDES}
    if resume is not None:
        cfg = _resume_config(resume, overrides)
    else:
        cfg = build_config(config, overrides)
    if print_config:
        typer.echo(dump_config(cfg), nl=False)
        return
    _run(cfg, resume, json_out, None if no_record else (results_db or ""))


def _resume_config(run_dir: Path, overrides: dict):
    from cifarbench.config import build_config

    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"--resume {run_dir}: no config.yaml there", hint="pass the run directory a train run wrote")
    changed = {k: v for k, v in overrides.items() if v is not None}
    allowed = {"epochs", "backend", "device", "data_dir", "eval_batch_size", "threads"}
    bad = sorted(set(changed) - allowed)
    if bad:
        raise UsageError(f"--resume keeps the run's recipe; cannot change: {', '.join(bad)}", hint="allowed: " + ", ".join(sorted(allowed)))
    cfg = build_config(str(run_dir / "config.yaml"), changed)
    return cfg.model_copy(update={"output": str(run_dir)})


def _run(cfg, resume: Optional[Path], json_out: bool, record_to: Optional[str] = None) -> None:
    from cifarbench.cli.progress import make_reporter
    from cifarbench.engine import distributed
    from cifarbench.engine.reporter import Reporter
    from cifarbench.engine.trainer import Trainer

    main_rank = distributed.is_main_process()  # under torchrun, ranks > 0 print nothing
    rep = make_reporter() if main_rank else Reporter()
    trainer = Trainer(cfg, rep, run_dir=resume, resume=resume is not None)
    if resume is not None:
        _check_not_finished(resume, cfg.epochs)
    try:
        summary = trainer.run()
    finally:
        close = getattr(rep, "close", None)
        if close:
            close()
        distributed.shutdown()
    if not main_rank:
        return
    if record_to is not None:  # never fails the run: warns instead
        from cifarbench.cli._console import warn
        from cifarbench.results import record_run

        record_run(Path(summary["run_dir"]) / "run_log.json", record_to or None, "train", warn, info)
    if json_out:
        print_json(summary)
    else:
        info(f"run directory: {summary['run_dir']}")


def _check_not_finished(run_dir: Path, epochs: int) -> None:
    import json

    side = run_dir / "checkpoint.json"
    if not side.is_file():
        raise UsageError(f"--resume {run_dir}: no checkpoint.json there (the run never finished an epoch)")
    done = json.loads(side.read_text()).get("epoch", 0)
    if done >= epochs:
        raise UsageError(f"run {run_dir} already finished {done} of {epochs} epochs", hint="pass --epochs N with N larger to continue")


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=False)(train)
