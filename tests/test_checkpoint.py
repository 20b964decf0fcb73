"""Checkpoint files: atomic, portable, and refused clearly when corrupt or for another model."""

import shutil

import numpy as np
import pytest

from cifarbench import checkpoint as ck
from cifarbench.errors import CheckpointError
from cifarbench.models import create_spec, init_params


def _meta(spec):
    return ck.model_metadata(spec.name, "cifar10", spec.num_classes, 3, 32, [str(i) for i in range(10)], (0.5,) * 3, (0.5,) * 3, "numpy")


def test_round_trip(tmp_path):
    spec = create_spec("cnn")
    state = init_params(spec, 3)
    ck.save_checkpoint(tmp_path, state, _meta(spec), {"step": np.array(5.0)}, {"epoch": 2})
    loaded = ck.load_checkpoint(tmp_path)
    assert loaded.model == "cnn" and loaded.num_classes == 10 and loaded.sidecar["epoch"] == 2
    assert loaded.meta["mean"] == [0.5, 0.5, 0.5]
    assert set(loaded.state) == set(state)
    for k in state:
        np.testing.assert_array_equal(loaded.state[k], state[k])
    assert float(ck.load_optimizer_state(tmp_path)["step"]) == 5.0
    ck.check_compatible(loaded.state, spec, "x")
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_init_params_deterministic_and_shaped():
    spec = create_spec("resnet18")
    a, b = init_params(spec, 1), init_params(spec, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], init_params(spec, 2)["conv1.weight"])
    for k, shape in {**spec.param_shapes(), **spec.buffer_shapes()}.items():
        assert a[k].shape == shape and a[k].dtype == np.float32
    bound = 1 / np.sqrt(3 * 9)
    assert np.abs(a["conv1.weight"]).max() <= bound


def test_corrupt_and_truncated(tmp_path):
    spec = create_spec("cnn")
    ck.save_checkpoint(tmp_path, init_params(spec), _meta(spec))
    data = (tmp_path / ck.WEIGHTS).read_bytes()
    # the top-level file is a hard link to the only generation's: writing it in place tears both
    (tmp_path / ck.WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="no complete checkpoint .*model.safetensors has .* bytes"):
        ck.load_checkpoint(tmp_path)
    (tmp_path / ck.WEIGHTS).write_bytes(b"x" * len(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        ck.load_checkpoint(tmp_path)
    (tmp_path / ck.SIDECAR).unlink()  # without a manifest (an old run directory) the file itself is checked
    shutil.rmtree(tmp_path / ck.GENERATIONS)
    (tmp_path / ck.WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "nothing.safetensors")


def test_other_model_or_class_count(tmp_path):
    spec10 = create_spec("cnn", num_classes=10)
    spec100 = create_spec("cnn", num_classes=100)
    with pytest.raises(CheckpointError, match="100 classes"):
        ck.check_compatible(init_params(spec10), spec100, "ckpt")
    with pytest.raises(CheckpointError, match="does not match model 'resnet18'"):
        ck.check_compatible(init_params(spec10), create_spec("resnet18"), "ckpt")


def test_foreign_safetensors_refused(tmp_path):
    ck.save_tensors(tmp_path / "model.safetensors", {"w": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="no cifarbench metadata"):
        ck.load_checkpoint(tmp_path)
