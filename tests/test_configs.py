"""Every bundled recipe loads, validates, names a registered model and a known data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarbench.config import build_config, list_configs
from cifarbench.models import create_spec, model_names
from cifarbench.models.shapes import output_shape

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _dataset_names() -> list[str]:
    try:
        from cifarbench.data.sources import DATASET_NAMES
    except ImportError:  # data package not there yet
        return ["cifar10", "cifar100", "cifar100-coarse", "mnist", "fashion-mnist", "synthetic"]
    return list(DATASET_NAMES)


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    for expected in ("cnn-adamw-cifar100", "lenet", "lenet-large-onecycle", "resnet18-onecycle-cifar100",
                     "cvet-cnn-mnist", "cvet-cnn-cifar10", "cvet-cnn-cifar100", "simplecnn", "resnet32-definfo"):
        assert expected in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 10, "first line must be a one-line description comment"
    cfg = build_config(str(path))
    assert cfg.model in model_names()
    assert cfg.dataset in _dataset_names()
    channels, size = (1, 28) if "mnist" in cfg.dataset else (3, 32)
    classes = 100 if cfg.dataset.startswith("cifar100") else 10
    spec = create_spec(cfg.model, channels, size, classes)
    assert output_shape(spec, 2) == (2, classes)
    if cfg.val_split:
        assert cfg.val_split == (6000 if cfg.dataset == "mnist" else 5000)  # the originals' 10 %


def test_list_configs_shows_descriptions():
    listed = {name: desc for name, desc, _ in list_configs()}
    for p in CONFIGS:
        assert listed[p.stem] and not listed[p.stem].startswith("#")


def test_recipes_match_the_originals():
    definfo = build_config("simplecnn")
    assert (definfo.opt, definfo.lr, definfo.momentum, definfo.warmup_epochs, definfo.min_lr) == ("sgd", 0.015, 0.0, 6, 1e-6)
    assert (definfo.epochs, definfo.batch_size, definfo.sched, definfo.normalize) == (40, 64, "cosine", "none")
    res = build_config("resnet32-definfo")
    assert (res.opt, res.lr, res.warmup_epochs, res.epochs, res.batch_size, res.sched) == ("adam", 0.01, 5, 50, 128, "cosine")
    cvet = build_config("cvet-cnn-mnist")
    assert (cvet.opt, cvet.lr, cvet.val_split, cvet.normalize) == ("adam", 1e-4, 6000, "dataset")
    r100 = build_config("resnet18-onecycle-cifar100")
    assert (r100.sched, r100.lr, r100.seed, r100.normalize, r100.augment) == ("onecycle", 0.1, 1111, "half", ["crop", "flip"])
    menz = build_config("cnn-adamw-cifar100")
    assert (menz.opt, menz.lr, menz.batch_size, menz.epochs, menz.augment, menz.normalize) == (
        "adamw", 3e-4, 64, 30, ["flip"], "none")
