"""`cifarbench train`: one training run, flags > config file > the model's home recipe > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rich.markup import escape

from cifarbench.cli._console import info, out_console, print_json
from cifarbench.cli.flags import flag_name, with_recipe_flags
from cifarbench.errors import UsageError

RESUMABLE = ("epochs", "backend", "device", "data_dir", "eval_batch_size", "threads",
             "keep_checkpoints", "logger")  # what --resume may change


@with_recipe_flags()
def train(
    model_arg: Optional[str] = typer.Argument(None, metavar="MODEL", show_default=False,
                                              help="Model name (see `cifarbench models`); same as --model."),
    config: Optional[str] = typer.Option(None, "--config", "-c", metavar="FILE", rich_help_panel="Run",
                                         help="YAML recipe: a path or a bundled name (see --list-configs)."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="DIR", rich_help_panel="Run",
                                          help="Continue the run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", rich_help_panel="Run",
                                   help="Replace the run already in the -o directory."),
    fast_dev_run: bool = typer.Option(
        False, "--fast-dev-run", rich_help_panel="Run",
        help="Smoke test: 2 training steps on a 2-batch subset (batch 8 unless -b), evaluation and test on "
        "2 batches; writes nothing unless -o is given."),
    beta1: Optional[float] = typer.Option(None, "--beta1", metavar="X", rich_help_panel="Recipe",
                                          help="Adam/AdamW beta1 alone (definfo's flag; --betas sets both)."),
    beta2: Optional[float] = typer.Option(None, "--beta2", metavar="X", rich_help_panel="Recipe",
                                          help="Adam/AdamW beta2 alone (definfo's flag; --betas sets both)."),
    finetune: Optional[str] = typer.Option(
        None, "--finetune", metavar="resnet18|resnet34|resnet50", rich_help_panel="Data",
        help="menzHSE's flag: model NAME-imagenet with --pretrained (its home recipe: 224 px, AdamW 3e-4)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config as YAML and exit."),
    list_configs: bool = typer.Option(False, "--list-configs", help="List the bundled recipes and exit."),
    json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings and the final line."),
    log_interval: str = typer.Option(
        "10%,30s", "--log-interval", metavar="EVERY",
        help="Without a terminal: a progress line every N steps, N% of an epoch or Ns, comma-combined "
        "(whichever comes first)."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not record the run in the results database."),
    results_db: Optional[str] = typer.Option(
        None, "--results-db", metavar="URL",
        help="Results database URL or SQLite path (default: $CIFARBENCH_RESULTS_DB, else the user data dir)."),
    recipe: dict = None,
) -> None:
    """Train a model; writes a run directory (config, metrics, checkpoint, run_log.json)."""
    from cifarbench.config import dump_config_sources, list_configs as bundled, recipe_line, resolve_config

    if list_configs:
        for name, desc, _ in bundled():
            out_console.print(f"[bold]{escape(name):28s}[/] {escape(desc)}", highlight=False)
        return
    overrides = dict(recipe)
    if model_arg and overrides.get("model") and model_arg != overrides["model"]:
        raise UsageError(f"model given twice: '{model_arg}' and --model '{overrides['model']}'")
    if model_arg:
        overrides["model"] = model_arg
    if finetune is not None:
        overrides = finetune_overrides(finetune, overrides)
    write = True
    if fast_dev_run:
        if resume is not None:
            raise UsageError("--fast-dev-run starts a fresh run; it cannot --resume")
        overrides = fast_dev_overrides(config, overrides)
        write = "output" in recipe  # nothing written unless -o
        no_record = no_record or not write
    if resume is not None:
        cfg = _resume_config(resume, overrides)
        sources = {k: ("flag" if overrides.get(k) is not None else f"file {resume / 'config.yaml'}")
                   for k in type(cfg).model_fields}
    else:  # no -c: the model's home recipe (configs/) under the flags
        cfg, sources = resolve_config(config, overrides, home=True)
    if beta1 is not None or beta2 is not None:
        if resume is not None:
            raise UsageError("--resume keeps the run's recipe; cannot change: --beta1/--beta2")
        b1, b2 = cfg.betas
        cfg, sources = resolve_config(config, {**overrides, "betas": (b1 if beta1 is None else beta1,
                                                                       b2 if beta2 is None else beta2)}, home=True)
    if print_config:
        typer.echo(dump_config_sources(cfg, sources), nl=False)
        return
    _run(cfg, resume, json_out, None if no_record else (results_db or ""), quiet=quiet,
         log_interval=log_interval, write=write, overwrite=overwrite,
         recipe=recipe_line(cfg, sources) if resume is None else None)


FINETUNE = ("resnet18", "resnet34", "resnet50")  # menzHSE's --finetune choices


def finetune_overrides(name: str, overrides: dict) -> dict:
    """``--finetune resnet34`` = ``resnet34-imagenet --pretrained`` (then its home recipe applies)."""
    from cifarbench.errors import unknown_name

    if name not in FINETUNE:
        raise unknown_name("--finetune model", name, list(FINETUNE))
    model = f"{name}-imagenet"
    if overrides.get("model") not in (None, model):
        raise UsageError(f"--finetune {name} trains {model}, but the model given is '{overrides['model']}'")
    if overrides.get("pretrained") is False:
        raise UsageError("--finetune fine-tunes the ImageNet weights: it cannot go with --no-pretrained")
    return {**overrides, "model": model, "pretrained": True}


FAST_DEV_BATCH = 8  # a smoke test checks that the pipeline runs, in seconds even for resnet18 on a CPU


def fast_dev_overrides(config: Optional[str], overrides: dict) -> dict:
    """--fast-dev-run: 2 steps on a 2-batch stratified subset, evaluation and test on 2 batches each;
    batches of 8 unless --batch-size is given; every other flag still applies."""
    batch = overrides.get("batch_size", FAST_DEV_BATCH)
    return {**overrides, "epochs": 1, "max_steps": 2, "batch_size": batch, "limit_train": 2 * batch,
            "limit_eval": 2 * batch, "eval_batch_size": batch}


def _resume_config(run_dir: Path, overrides: dict):
    from cifarbench.config import build_config

    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"--resume {run_dir}: no config.yaml there", hint="pass the run directory a train run wrote")
    changed = {k: v for k, v in overrides.items() if v is not None}
    allowed = set(RESUMABLE)
    bad = sorted(set(changed) - allowed)
    if bad:
        raise UsageError(f"--resume keeps the run's recipe; cannot change: {', '.join(flag_name(b) for b in bad)}",
                         hint="allowed: " + ", ".join(flag_name(a) for a in sorted(allowed)))
    cfg = build_config(str(run_dir / "config.yaml"), changed)
    return cfg.model_copy(update={"output": str(run_dir)})


def _run(cfg, resume: Optional[Path], json_out: bool, record_to: Optional[str] = None, quiet: bool = False,
         log_interval: Optional[str] = None, write: bool = True, overwrite: bool = False,
         recipe: Optional[str] = None) -> None:
    from cifarbench.cli.progress import make_reporter
    from cifarbench.engine import distributed
    from cifarbench.engine.reporter import Reporter, Tee
    from cifarbench.engine.trainer import Trainer, default_run_dir
    from cifarbench import checkpoint as ckpt
    from cifarbench.paths import need_writable_folder

    target = Path(resume or cfg.output or default_run_dir(cfg))
    refused = resume is None and not overwrite and target.is_dir() and ckpt.has_checkpoint(target)
    if write and not refused and distributed.is_main_process():  # fail before any work when it cannot be written
        need_writable_folder(target, "--resume" if resume else "-o")  # (an existing run is refused untouched)

    main_rank = distributed.is_main_process()  # under torchrun, ranks > 0 print nothing
    rep = make_reporter(quiet, log_interval) if main_rank else Reporter()
    if cfg.logger and main_rank:
        rep = _with_trackers(rep, cfg, log_interval, resume is not None, write)
    trainer = Trainer(cfg, rep, run_dir=resume, resume=resume is not None, write=write, overwrite=overwrite,
                      recipe=recipe)
    if resume is not None:
        _check_not_finished(resume, cfg.epochs)
    failed = True
    try:
        summary = trainer.run()
        failed = False
    finally:
        close = getattr(rep, "close", None)
        if close:
            close(failed=failed) if isinstance(rep, Tee) else close()
        distributed.shutdown()
    if not main_rank:
        return
    if record_to is not None:  # never fails the run: warns instead
        from cifarbench.cli._console import warn
        from cifarbench.results import record_run

        record_run(Path(summary.run_dir) / "run_log.json", record_to or None, "train", warn, info)
    if json_out:
        print_json(summary.to_dict())
    elif write and not quiet:
        info(f"run directory: {escape(summary.run_dir)}")


def _with_trackers(rep, cfg, log_interval: Optional[str], resume: bool, write: bool):
    """The display plus one sink per --logger (a missing extra is exit 3 here, before any work)."""
    from cifarbench.cli.progress import DEFAULT_LOG_INTERVAL, parse_log_interval
    from cifarbench.engine.reporter import Tee
    from cifarbench.trackers import make_trackers

    if not write:  # --fast-dev-run without -o writes nothing, trackers included
        rep.warning(f"--logger {','.join(cfg.logger)}: off, since --fast-dev-run without -o writes nothing")
        return rep
    interval = parse_log_interval(log_interval or DEFAULT_LOG_INTERVAL)
    return Tee(rep, make_trackers(cfg.logger, cfg.model_dump(mode="json"), interval, resume))


def _check_not_finished(run_dir: Path, epochs: int) -> None:
    from cifarbench import checkpoint as ckpt

    if not ckpt.has_checkpoint(run_dir):
        raise UsageError(f"--resume {run_dir}: no checkpoint there (the run never finished an epoch)")
    folder, _, _ = ckpt.locate(run_dir)  # the newest complete generation
    if not (folder / ckpt.SIDECAR).is_file():
        raise UsageError(f"--resume {run_dir}: no checkpoint.json there (the run never finished an epoch)")
    done = ckpt.verify(folder).get("epoch", 0)
    if not isinstance(done, int):
        raise ckpt.CheckpointError(f"corrupt {folder / ckpt.SIDECAR}: 'epoch' is {done!r}")
    if done >= epochs:
        raise UsageError(f"run {run_dir} already finished {done} of {epochs} epochs", hint="pass --epochs N with N larger to continue")


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=False)(train)
