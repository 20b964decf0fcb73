"""RunConfig: validation, precedence flag > file > default, and clear errors."""

import pytest

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
