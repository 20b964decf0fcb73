"""RunConfig: validation, precedence flag > file > default, and clear errors."""

import pytest
import yaml

from cifarbench.config import RunConfig, build_config, dump_config, list_configs
from cifarbench.errors import UsageError


def test_precedence(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("# test recipe\nmodel: resnet18\nepochs: 7\nlr: 0.2\n")
    cfg = build_config(str(f), {"epochs": 3, "lr": None})
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.batch_size) == ("resnet18", 3, 0.2, 64)


def test_unknown_key_in_file_names_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("modle: cnn\n")
    with pytest.raises(UsageError, match="modle") as info:
        build_config(str(f))
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "override,field",
    [({"lr": 0}, "lr"), ({"epochs": 0}, "epochs"), ({"opt": "rmsprop"}, "opt"), ({"precision": "fp8"}, "precision"),
     ({"augment": "rotate"}, "augment"), ({"loader": "mlx-data"}, "mlx-data")],
)
def test_invalid_values(override, field):
    with pytest.raises(UsageError, match=field):
        build_config(None, override)


def test_bad_yaml(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        build_config(str(f))


def test_augment_string_forms_and_round_trip(tmp_path):
    assert build_config(None, {"augment": "crop+flip"}).augment == ["crop", "flip"]
    assert build_config(None, {"augment": "none"}).augment == []
    cfg = build_config("resnet18-onecycle")
    f = tmp_path / "dump.yaml"
    f.write_text(dump_config(cfg))
    assert build_config(str(f)) == cfg


def test_bundled_recipes_listed_and_valid():
    names = {n for n, _, _ in list_configs()}
    assert {"cnn-adamw", "resnet18-onecycle"} <= names
    cfg = build_config("cnn-adamw")
    assert (cfg.model, cfg.opt, cfg.lr, cfg.batch_size, cfg.epochs) == ("cnn", "adamw", 3e-4, 64, 30)
    r18 = build_config("resnet18-onecycle")
    assert (r18.opt, r18.sched, r18.lr, r18.weight_decay, r18.batch_size, r18.epochs) == ("sgd", "onecycle", 0.1, 5e-4, 64, 40)
    assert r18.augment == ["crop", "flip"]
    assert isinstance(r18, RunConfig)


# ----- a model's home recipe ---------------------------------------------------------------------
def test_the_users_first_command_runs_mike7seven_recipe():
    """`cifarbench train resnet18 --scheduler onecycle` is mike7seven's recipe: SGD peak 0.1, crop+flip, [-1, 1]."""
    from conftest import invoke

    res = invoke(["train", "resnet18", "--scheduler", "onecycle", "--print-config"])
    assert res.exit_code == 0, res.output
    printed = yaml.safe_load(res.stdout)
    assert (printed["opt"], printed["lr"], printed["augment"], printed["normalize"]) == ("sgd", 0.1, ["crop", "flip"], "half")
    assert printed["epochs"] == 40 and printed["max_momentum"] == 0.95
    lines = dict(ln.split(":", 1) for ln in res.stdout.splitlines() if ln and not ln.startswith((" ", "-")))
    assert lines["opt"].endswith("# model default (resnet18-onecycle)")
    assert lines["sched"].endswith("# flag") and lines["eval_batch_size"].endswith("# default")
    assert build_config(None, printed) == RunConfig(**printed)  # the printed YAML loads back to the same run


def test_home_recipes_are_looked_up_most_specific_first_and_flags_and_files_override(tmp_path):
    from cifarbench.config import home_recipe, resolve_config

    assert home_recipe("resnet18") == "resnet18-adamw"
    assert home_recipe("resnet18", "onecycle", "cifar100") == "resnet18-onecycle-cifar100"
    assert home_recipe("cvet-cnn", None, "cifar10") == "cvet-cnn-cifar10"
    assert home_recipe("cnn", "cosine", "cifar100") == "cnn-adamw-cifar100"
    assert home_recipe("resnet20") is None and home_recipe("tv:resnet18") is None
    cfg, src = resolve_config(None, {"model": "resnet18", "sched": "onecycle", "lr": 0.05}, home=True)
    assert (cfg.lr, src["lr"], cfg.opt, src["opt"]) == (0.05, "flag", "sgd", "model default (resnet18-onecycle)")
    own = tmp_path / "mine.yaml"
    own.write_text("model: resnet18\nepochs: 3\n")
    cfg, src = resolve_config(str(own), {"sched": "onecycle"}, home=True)  # -c replaces the home recipe
    assert (cfg.opt, cfg.epochs, src["epochs"]) == ("adamw", 3, f"file {own}")
    assert build_config(None, {"model": "resnet18"}).opt == "adamw" and build_config(None, {"model": "resnet18"}).lr == 3e-4
    for model in ("cnn", "cnn-leaky", "cvet-cnn", "lenet", "resnet18", "simplecnn", "resnet32-definfo", "speedrun"):
        cfg, src = resolve_config(None, {"model": model}, home=True)
        assert cfg.model == model and any(v.startswith("model default") for v in src.values()), model


def test_a_run_prints_its_recipe_in_one_line(tiny_npz, tmp_path):
    from conftest import invoke

    res = invoke(["train", "cnn", "--dataset", tiny_npz, "--epochs", "1", "--batch-size", "48", "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("recipe:"))
    assert "adamw lr 0.0003" in line and "1 epoch of batch 48" in line and "augment flip" in line
    assert "model default (cnn-adamw)" in line
