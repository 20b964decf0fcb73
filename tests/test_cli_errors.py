"""Bad input: a one-line reason, the right exit code, never a traceback."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from cifarbench.checkpoint import model_metadata, save_checkpoint
from cifarbench.models import create_spec, init_params
from conftest import invoke


def test_unknown_names_list_valid_ones(tiny_npz):
    res = invoke(["train", "nosuchnet", "--dataset", tiny_npz])
    assert res.exit_code == 2 and "unknown model 'nosuchnet'" in res.output and "resnet18" in res.output
    res = invoke(["train", "cnn", "--backend", "tensorflow", "--dataset", tiny_npz])
    assert res.exit_code == 2 and "unknown backend" in res.output and "torch" in res.output
    res = invoke(["train", "cnn", "--dataset", "imagenet"])
    assert res.exit_code == 2 and "unknown dataset 'imagenet'" in res.output and "cifar100" in res.output


def test_invalid_config_values_name_the_field(tmp_path):
    res = invoke(["train", "--batch-size", "0"])
    assert res.exit_code == 2 and "--batch-size: " in res.output  # a flag is named as it is typed
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: cnn\nlr: fast\n")
    res = invoke(["train", "-c", str(bad)])
    assert res.exit_code == 2 and "lr: " in res.output and str(bad) in res.output and "--lr" not in res.output


def test_unavailable_device_exits_3(tiny_npz):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = invoke(["train", "cnn", "--dataset", tiny_npz, "--backend", "cuda", "--epochs", "1"])
    assert res.exit_code == 3 and "not available" in res.output and "cuda" in res.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_data_offline_says_where(tmp_path):
    env = {"CIFARBENCH_MIRROR": f"http://127.0.0.1:{_closed_port()}/"}
    res = invoke(["train", "cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--epochs", "1"], env=env)
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert str(tmp_path / "empty") in text and "http://127.0.0.1" in text and "--data-dir" in text


def test_corrupt_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(b"\x00" * 10)
    res = invoke(["test", str(run_dir)])
    assert res.exit_code == 1 and "corrupt checkpoint" in res.output
    res = invoke(["test", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "not found" in res.output


def test_checkpoint_for_other_class_count(tmp_path, tiny_npz):
    spec = create_spec("cnn", num_classes=10)  # tiny_npz has 4 classes
    meta = model_metadata("cnn", tiny_npz, 10, 3, 32, [str(i) for i in range(10)], (0.5,) * 3, (0.5,) * 3, "torch")
    save_checkpoint(tmp_path / "run", init_params(spec), meta)
    res = invoke(["test", str(tmp_path / "run"), "--backend", "numpy"])
    assert res.exit_code == 1 and "4 classes" in res.output and "fc2.weight" in res.output
    meta = model_metadata("resnet18", tiny_npz, 4, 3, 32, list("abcd"), (0.5,) * 3, (0.5,) * 3, "torch")
    save_checkpoint(tmp_path / "other", init_params(create_spec("cnn", num_classes=4)), meta)
    res = invoke(["test", str(tmp_path / "other"), "--backend", "numpy"])
    assert res.exit_code == 1 and "does not match model 'resnet18'" in res.output


def test_debug_shows_traceback(tiny_npz):
    from typer.testing import CliRunner

    from cifarbench.cli import app

    res = CliRunner().invoke(app, ["--debug", "train", "nosuchnet", "--dataset", tiny_npz])
    assert res.exit_code != 0 and res.exception is not None and not isinstance(res.exception, SystemExit)


def test_resume_refuses_recipe_changes(tmp_path):
    (tmp_path / "config.yaml").write_text("model: cnn\n")
    res = invoke(["train", "--resume", str(tmp_path), "--lr", "0.1"])
    assert res.exit_code == 2 and "cannot change: --lr" in res.output
    res = invoke(["train", "--resume", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no config.yaml" in res.output


def test_npz_malformed(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((3, 32, 32, 3), np.uint8))
    res = invoke(["train", "cnn", "--dataset", f"npz:{bad}", "--epochs", "1"])
    assert res.exit_code in (1, 2) and "y_train" in res.output


def test_brackets_in_messages_are_printed_not_parsed_as_markup():
    """'pip install cifarbench[torchvision]' must reach the user with its extra intact."""
    res = invoke(["train", "[bold]net[/bold]", "--dataset", "synthetic"])
    assert res.exit_code == 2 and "unknown model '[bold]net[/bold]'" in res.output
