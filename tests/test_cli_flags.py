"""Flags and help: every RunConfig field is a flag of train (and bench's recipe flags), derived in one
place; --print-config round-trips; help shows defaults with plain metavars; errors name the flag or the
YAML key and file in our words, with the closest valid name; rich markup in messages is escaped."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import invoke

from cifarbench.cli.bench_cmd import OWN, TRAIN_ONLY
from cifarbench.cli.flags import flag_name
from cifarbench.config import RunConfig, dump_config


def _options(command: str) -> set[str]:
    import typer

    from cifarbench.cli import app

    group = typer.main.get_command(app)
    cmd = group.commands[command]
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def test_every_runconfig_field_is_a_train_flag_and_a_bench_recipe_flag():
    train, bench = _options("train"), _options("bench")
    for field in RunConfig.model_fields:
        assert flag_name(field) in train, field
        assert flag_name(field) in bench or field in OWN + TRAIN_ONLY, field


def _flags_for(cfg: RunConfig) -> list[str]:
    """The command line that sets every field of cfg, each spelt as a user would type it."""
    args = []
    for field, value in cfg.model_dump(mode="json").items():
        if value is None:
            continue
        name = flag_name(field)
        if isinstance(value, bool):
            args.append(name if value else f"--no-{name[2:]}")
        elif isinstance(value, list):
            args += [name, ",".join(str(v) for v in value) or "none"]
        else:
            args += [name, str(value)]
    return args


def test_print_config_round_trips_through_flags_and_a_file(tmp_path):
    # a config far from the defaults in every field it can be
    cfg = RunConfig(
        model="resnet18", dataset="synthetic", data_dir=str(tmp_path), val_split=100, backend="numpy", device="cpu",
        precision="bf16", compile=True, compile_mode="max-autotune", memory_limit=2.5, threads=3, epochs=7,
        batch_size=32, eval_batch_size=250, opt="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-4,
        betas=(0.8, 0.95), sched="step", warmup_epochs=0.5, warmup_start_factor=0.1, min_lr=1e-5,
        step_epochs=[3, 5], step_gamma=0.2, pct_start=0.25, div_factor=10.0, final_div_factor=100.0,
        final_lr_factor=0.07, bn_bias_lr_scale=64.0, lookahead_every=5, lookahead_decay=0.9, tta=2,
        cycle_momentum=False, base_momentum=0.8, label_smoothing=0.2, augment=["crop", "flip"], crop_pad=2,
        flip_mode="alternate", normalize="half", seed=11, output=str(tmp_path / "o"), save_every=3, max_steps=50,
        limit_train=500, limit_eval=200, max_momentum=0.9, dropout_rate=0.3, dropout_schedule="adaptive",
        min_dropout=0.05, max_dropout=0.6, dropout_patience=3, keep_checkpoints=2, head_lr_scale=2.0, muon_lr=0.1,
        muon_momentum=0.5, whiten_bias_epochs=1.5, logger=["tensorboard", "csv"], image_size=48, crop_pct=0.75,
        pretrained=True,
    )
    untouched = [f for f, info in RunConfig.model_fields.items()
                 if getattr(cfg, f) == info.get_default(call_default_factory=True)]
    assert untouched == ["loader"]  # loader has one other value, valid only with mlx
    res = invoke(["train", *_flags_for(cfg), "--print-config"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout) == yaml.safe_load(dump_config(cfg))
    assert all(ln.endswith("# flag") for ln in res.stdout.splitlines() if ln and not ln.startswith((" ", "-")))
    path = tmp_path / "c.yaml"
    path.write_text(res.stdout)  # the source comments are YAML comments: it loads back as the same recipe
    again = invoke(["train", "-c", str(path), "--print-config"])
    assert again.exit_code == 0 and yaml.safe_load(again.stdout) == yaml.safe_load(res.stdout)
    # a flag beats the file; the file beats the defaults
    over = invoke(["train", "-c", str(path), "--lr", "0.5", "--print-config"])
    assert yaml.safe_load(over.stdout)["lr"] == 0.5 and yaml.safe_load(over.stdout)["epochs"] == 7


def test_help_shows_defaults_and_plain_metavars():
    res = invoke(["train", "--help"], env={"COLUMNS": "200"})
    text = res.output
    for flag, default in (("--epochs", "30"), ("--batch-size", "64"), ("--lr", "0.0003"), ("--opt", "adamw"),
                          ("--sched", "constant")):
        lines = text.splitlines()
        at = next(i for i, ln in enumerate(lines) if f"{flag} " in ln or f"{flag}," in ln)
        block = " ".join(lines[at:at + 3])  # a long description wraps the default onto the next lines
        assert f"[default: {default}]" in block, block
    assert "constant|step|cosine|linear|onecycle|triangle" in text  # from RunConfig's Literal, triangle included
    assert not re.search(r"<(bool|str|int|float|list\[\w+\]|path)>|\[\[|\{\w+\}", text), text
    for cmd in (["test", "--help"], ["plot", "--help"], ["bench", "--help"], ["--help"]):
        out = invoke(cmd, env={"COLUMNS": "200"}).output
        assert not re.search(r"<(bool|str|int|float|list\[\w+\]|path|Path,Path)>|\[\[|\{\w+\}", out), (cmd, out)


def test_shell_completion_is_enabled():
    assert "--install-completion" in invoke(["--help"], env={"COLUMNS": "200"}).output


@pytest.mark.parametrize("args, expected", [
    (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["--batch-size", "x"], "--batch-size: must be a whole number, got 'x'"),
    (["--lr", "-1"], "--lr: must be greater than 0, got -1"),
    (["--opt", "sgdd"], "--opt: must be one of sgd, adam, adamw, muon, got 'sgdd' (did you mean 'sgd'?)"),
    (["--augment", "crap"], "--augment: must be one of crop, flip, got 'crap' (did you mean 'crop'?)"),
    (["--betas", "0.9"], "--betas: has too few values"),
])
def test_option_errors_name_the_flag_in_our_words(args, expected):
    res = invoke(["train", *args, "--print-config"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[0] == f"error: {expected}"
    assert "Input should" not in res.output and "Value error" not in res.output


def test_config_file_errors_name_the_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_sise: 3\nopt: adamw\nlr: 0\n")
    res = invoke(["train", "-c", str(path), "--print-config"])
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[0]
    assert line.startswith(f"error: config {path}: ")
    assert "unknown key 'batch_sise' (did you mean 'batch_size'?)" in line and "lr: must be greater than 0, got 0" in line


def test_unknown_model_suggests_the_closest(tiny_npz):
    res = invoke(["train", "resnt18", "--dataset", tiny_npz])
    assert res.exit_code == 2 and "unknown model 'resnt18'" in res.output
    assert "did you mean 'resnet18'?" in res.output


def test_backends_table_shows_pip_extras(monkeypatch):
    from cifarbench import backends
    from cifarbench.backends import Availability

    rows = [Availability("cupy", "cuda", False, "cupy is not installed (pip install 'cifarbench[cupy]')"),
            Availability("mlx", "gpu", False, "this MLX build has neither Metal nor CUDA (e.g. mlx[cpu])")]
    monkeypatch.setattr(backends, "availability_matrix", lambda: rows)
    out = invoke(["backends"], env={"COLUMNS": "200"}).output
    assert "'cifarbench[cupy]'" in out and "mlx[cpu]" in out
