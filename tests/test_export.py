"""`cifarbench export`: the originals load what we write, and `import` of it gives back the same run.

Each format test builds a run directory with random weights and non-trivial BN statistics,
exports it, then (1) loads the file the way the original's code does (a strict torch
``load_state_dict`` / MLX ``load_weights`` into the original's module restated in
tests/test_import.py, or definfo's attribute-by-attribute load) and compares the logits with
ours, and (2) imports the file back and requires the very same tensors, bit for bit, so every
evaluation of the round trip is the original's. The CLI test trains a real run and compares
`cifarbench test` of the original and of the round trip, and onnxruntime's predictions.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import invoke, tree_state, write_npz
from test_import import (  # the originals' modules, restated from their code (see that file)
    _f32_tolerance,
    _menz_torch_cnn,
    _mlx_menz_cnn,
    _torch_backend_logits,
)

from cifarbench.checkpoint import load_checkpoint, model_metadata, save_checkpoint
from cifarbench.errors import UsageError
from cifarbench.exporters import export_run
from cifarbench.importers import CIFAR10_CLASSES, convert
from cifarbench.models import create_spec, init_params

UNIT, HALF = (0.0, 1.0), (0.5, 0.5)


def _run_dir(tmp_path, model, norm, classes=10, seed=0):
    spec = create_spec(model, 3, 32, classes)
    rng = np.random.default_rng(seed)
    state = init_params(spec, seed)
    for k in state:
        if k.endswith("running_mean"):
            state[k] = rng.normal(0, 0.1, state[k].shape).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 1.5, state[k].shape).astype(np.float32)
        elif k.endswith("bias"):
            state[k] = rng.normal(0, 0.05, state[k].shape).astype(np.float32)
    names = list(CIFAR10_CLASSES) if classes == 10 else [f"c{i}" for i in range(classes)]
    meta = model_metadata(model, "cifar10" if classes == 10 else "cifar100", classes, 3, 32, names,
                          (norm[0],) * 3, (norm[1],) * 3, "torch")
    run = tmp_path / f"run-{model}"
    save_checkpoint(run, state, meta)
    return run, spec, state


def _same_state(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("target,model,framework,norm", [
    ("menzhse", "cnn", "mlx", UNIT),
    ("menzhse", "cnn-leaky", "torch", UNIT),
    ("mike7seven", "resnet18", "torch", HALF),
    ("mike7seven", "resnet18", "mlx", HALF),
    ("mike7seven", "lenet", "torch", HALF),
    ("mike7seven", "cnn", "mlx", HALF),
    ("definfo", "simplecnn", "numpy", UNIT),
])
def test_export_then_import_gives_back_the_same_tensors(tmp_path, target, model, framework, norm):
    if framework == "torch":
        pytest.importorskip("torch")
    run, spec, state = _run_dir(tmp_path, model, norm)
    done = export_run(run, target, framework=framework)
    assert done.framework == framework and done.path.parent == run
    conv = convert(done.path, target, trust_pickle=(target == "definfo"))
    assert (conv.model, conv.dataset) == (model, "cifar10")
    assert (conv.mean, conv.std) == ((norm[0],) * 3, (norm[1],) * 3)
    _same_state(conv.state, state)


def test_menzhse_torch_export_loads_strictly_into_its_module(tmp_path):
    torch = pytest.importorskip("torch")
    run, spec, state = _run_dir(tmp_path, "cnn-leaky", UNIT, classes=100)
    path = export_run(run, "menzhse").path
    assert path.suffix == ".pth"
    theirs = _menz_torch_cnn(torch, 100)
    theirs.load_state_dict(torch.load(path, weights_only=True))  # strict: names, shapes, BN counters
    theirs.eval()
    x = np.random.default_rng(1).uniform(0, 1, (3, 3, 32, 32)).astype(np.float32)  # menzHSE fed x / 255
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    got = _torch_backend_logits(spec, state, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=_f32_tolerance(spec, want))


def test_menzhse_mlx_export_loads_strictly_into_its_module(tmp_path):
    mx = pytest.importorskip("mlx.core")
    nn = pytest.importorskip("mlx.nn")
    run, spec, state = _run_dir(tmp_path, "cnn", UNIT)
    path = export_run(run, "menzhse").path
    assert path.suffix == ".npz"
    theirs = _mlx_menz_cnn(nn, mx, 10, ("conv_skip2", "conv_skip4", "conv_skip6"))
    theirs.load_weights(str(path))  # strict by default: every name and shape must match
    theirs.eval()
    x = np.random.default_rng(2).uniform(0, 1, (3, 3, 32, 32)).astype(np.float32)
    want = np.array(theirs(mx.array(x.transpose(0, 2, 3, 1))))
    got = _torch_backend_logits(spec, state, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=_f32_tolerance(spec, want))


def test_definfo_export_is_what_its_load_checkpoint_reads(tmp_path):
    """definfo's load_checkpoint sets each attribute its SimpleCNN has (convs OIHW, FC weights (in, out))."""
    run, spec, state = _run_dir(tmp_path, "simplecnn", UNIT)
    d = pickle.loads(export_run(run, "definfo").path.read_bytes())
    assert d["name"] == "SimpleCNN"
    assert d["conv1_w"].shape == (16, 3, 3, 3) and d["fc1_w"].shape == (32 * 6 * 6, 256)
    assert d["fc3_w"].shape == (128, 10) and all(v.dtype == np.float32 for v in d.values() if hasattr(v, "dtype"))
    np.testing.assert_array_equal(d["fc2_w"], state["fc2.weight"].T)


@pytest.mark.parametrize("target,model,norm,match", [
    ("menzhse", "cnn", HALF, "--normalize none"),
    ("mike7seven", "resnet18", UNIT, "--normalize half"),
    ("definfo", "resnet32-definfo", UNIT, "no BatchNorm running statistics"),
    ("definfo", "cnn", UNIT, "definfo has no cnn model"),
    ("mike7seven", "lenet", HALF, "not mlx"),
])
def test_exports_that_cannot_hold_are_refused(tmp_path, target, model, norm, match):
    run, _, _ = _run_dir(tmp_path, model, norm)
    before = tree_state(run)
    with pytest.raises(UsageError) as err:
        export_run(run, target, framework="mlx" if match == "not mlx" else None)
    assert match in f"{err.value.message} {err.value.hint}"
    assert tree_state(run) == before


def test_cli_train_export_import_test_and_onnx(tmp_path):
    """A trained run, exported to mike7seven and ONNX: `test` of the round trip and onnxruntime agree with it."""
    pytest.importorskip("torch")
    npz = write_npz(tmp_path / "d.npz", n_train=200, n_test=60, classes=10)
    data = f"npz:{npz}"
    run, back = tmp_path / "run", tmp_path / "back"
    res = invoke(["train", "lenet", "--dataset", data, "--epochs", "3", "--batch-size", "16", "--normalize", "half",
                  "--opt", "adamw", "--lr", "0.003", "-o", str(run), "--threads", "1"])
    assert res.exit_code == 0, res.output
    res = invoke(["export", str(run), "--to", "mike7seven", "-o", str(tmp_path / "lenet.pth"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["framework"] == "torch"
    res = invoke(["export", str(run), "--to", "mike7seven", "-o", str(tmp_path / "lenet.pth")])
    assert res.exit_code == 2 and "exists" in res.output  # never overwritten unless asked
    res = invoke(["import", str(tmp_path / "lenet.pth"), "--from", "mike7seven", "-o", str(back)])
    assert res.exit_code == 0, res.output

    def tested(path):
        r = invoke(["test", str(path), "--dataset", data, "--json", "--threads", "1"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    ours, round_trip = tested(run), tested(back)
    assert round_trip["accuracy"] == ours["accuracy"] and round_trip["confusion_matrix"] == ours["confusion_matrix"]
    assert ours["accuracy"] > 0.3  # it learned something (0.72 here): 10 colour classes, chance is 0.1

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from cifarbench.data import load_dataset
    from cifarbench.engine.metrics import evaluate_logits
    from cifarbench.exporters import onnx_predict

    res = invoke(["export", str(run), "--to", "onnx", "--json"])
    assert res.exit_code == 0, res.output
    onnx_path = json.loads(res.stdout)["path"]
    ds = load_dataset(data)
    logits = onnx_predict(onnx_path, ds.x_test)
    ev = evaluate_logits(logits, ds.y_test, ds.class_names)
    assert ev["accuracy"] == ours["accuracy"]
    spec = create_spec("lenet", 3, 32, 10)
    x = ((ds.x_test.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2)
    want = _torch_backend_logits(spec, load_checkpoint(run).state, np.ascontiguousarray(x))
    np.testing.assert_allclose(logits, want, rtol=0, atol=_f32_tolerance(spec, want))
