"""tv:NAME: clear error without torchvision; the small-image adaptation on a torchvision-like model."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from cifarbench.errors import UsageError
from cifarbench.models import tv
from cifarbench.models.registry import check_runs_on

HAS_TV = importlib.util.find_spec("torchvision") is not None


@pytest.mark.skipif(HAS_TV, reason="torchvision is installed")
def test_missing_torchvision_is_a_usage_error():
    with pytest.raises(UsageError, match=r"tv:resnet18 needs the torchvision extra \(pip install 'cifarbench\[torchvision\]'\)"):
        tv.build_torchvision_model("tv:resnet18", 3, 32, 10)
    with pytest.raises(UsageError, match="torchvision extra"):
        tv.list_torchvision_models()


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in exposing torchvision's list_models/get_model with an ImageNet-style stem."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Tiny(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2))
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            x = self.layer(self.maxpool(self.conv1(x)))
            return self.fc(x.mean(dim=(2, 3)))

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["tiny"]
    models.get_model = lambda name, weights=None, num_classes=1000: Tiny(num_classes)
    fake = types.ModuleType("torchvision")
    fake.models = models
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return torch


def test_adaptation_replaces_stem_and_keeps_later_pools(fake_torchvision):
    torch = fake_torchvision
    assert tv.list_torchvision_models() == ["tiny"]
    model = tv.build_torchvision_model("tv:tiny", 1, 28, 100)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert isinstance(model.layer[1], torch.nn.MaxPool2d)  # not in the stem: kept
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 100)
    with pytest.raises(UsageError, match="unknown torchvision model"):
        tv.build_torchvision_model("tv:nope", 3, 32, 10)


def test_fake_torchvision_model_runs_on_the_torch_backend(fake_torchvision):
    """The spec/backend wiring without torchvision: names, init, training step, capture points."""
    from cifarbench.backends.base import OptimConfig, TrainOptions
    from cifarbench.backends.torch_backend import TorchBackend
    from cifarbench.models import create_spec, init_params

    torch = fake_torchvision
    spec = create_spec("tv:tiny", 3, 16, 4)
    model = tv.build_torchvision_model("tv:tiny", 3, 16, 4)
    assert set(spec.param_shapes()) == {k for k, _ in model.named_parameters()}
    assert spec.num_params() == sum(p.numel() for p in model.parameters())
    assert spec.capture_points == ("conv1", "layer") and "layer.1" in spec.points
    state = init_params(spec, seed=3)
    rng_before = torch.random.get_rng_state()
    assert all(np.array_equal(state[k], v) for k, v in init_params(spec, seed=3).items())
    assert not np.array_equal(state["fc.weight"], init_params(spec, seed=4)["fc.weight"])
    assert torch.equal(rng_before, torch.random.get_rng_state())  # seeded init leaves the global RNG alone
    be = TorchBackend("cpu", TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3))
    be.build(spec, state)
    be.configure_optimizer(OptimConfig("sgd", momentum=0.9))
    rng = np.random.default_rng(0)
    be.set_data("train", rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8), rng.integers(0, 4, 8))
    be.begin_epoch(np.arange(8), None, None, seed=0)
    be.train_step(0, 8, lr=0.1, momentum=0.9)
    assert be.end_epoch().count == 8
    assert not np.array_equal(be.state_dict()["fc.weight"], state["fc.weight"])
    assert set(be.optimizer_state()) == {f"{k}.momentum_buffer" for k in spec.param_shapes()} | {"step"}
    logits, caps = be.forward(np.zeros((2, 3, 16, 16), np.float32), capture=["layer"])
    assert logits.shape == (2, 4) and caps["layer"].shape == (2, 8, 8, 8)
    with pytest.raises(UsageError, match="unknown capture point"):
        be.forward(np.zeros((1, 3, 16, 16), np.float32), capture=["nope"])


def test_other_backends_refuse_tv_models():
    with pytest.raises(UsageError, match=r"tv:resnet18 runs on the torch backend only, not 'numpy'"):
        check_runs_on("tv:resnet18", "numpy")
    check_runs_on("cnn", "numpy")  # not a tv: name: nothing to check


def test_activations_refuse_tv_checkpoints_on_other_backends(tmp_path):
    """The backend check runs before the model is built (with or without torchvision)."""
    import numpy as np
    from typer.testing import CliRunner

    from cifarbench.checkpoint import model_metadata, save_checkpoint
    from cifarbench.cli import app

    meta = model_metadata("tv:resnet18", "cifar10", 10, 3, 32, [str(i) for i in range(10)], (0.5,) * 3, (0.5,) * 3,
                          "torch")
    save_checkpoint(tmp_path / "run", {"fc.weight": np.zeros((10, 512), np.float32)}, meta)
    res = CliRunner().invoke(app, ["activations", str(tmp_path / "run"), "--backend", "numpy", "-o", str(tmp_path / "a")])
    assert res.exit_code == 2 and "runs on the torch backend only, not 'numpy'" in res.output
    assert "Traceback" not in res.output


@pytest.mark.skipif(HAS_TV, reason="torchvision is installed")
def test_cli_without_torchvision(tmp_path):
    from typer.testing import CliRunner

    from cifarbench.cli import app

    res = CliRunner().invoke(app, ["train", "tv:resnet18", "--backend", "mlx", "--dataset", "synthetic"])
    assert res.exit_code == 2 and "torch backend only" in res.output
    res = CliRunner().invoke(app, ["train", "tv:resnet18", "--backend", "torch", "--dataset", "synthetic",
                                   "-o", str(tmp_path / "run")])
    assert res.exit_code == 2 and "needs the torchvision extra" in res.output
    res = CliRunner().invoke(app, ["models", "--json"])
    listed = json.loads(res.stdout)
    assert listed["namespaces"]["tv:"]["models"] is None and tv.INSTALL_HINT in listed["namespaces"]["tv:"]["note"]


# ----- with the real torchvision ------------------------------------------------------------

needs_tv = pytest.mark.skipif(not HAS_TV, reason="torchvision is not installed")


@needs_tv
def test_resnet18_spec_matches_torchvision():
    import torch

    from cifarbench.models import create_spec

    spec = create_spec("tv:resnet18", 3, 32, 10)
    ref = tv.build_torchvision_model("resnet18", 3, 32, 10)
    assert spec.num_params() == sum(p.numel() for p in ref.parameters()) == 11_173_962
    names = {k for k in ref.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(spec.param_shapes()) | set(spec.buffer_shapes()) == names
    assert ref.conv1.kernel_size == (3, 3) and isinstance(ref.maxpool, torch.nn.Identity)
    assert spec.capture_points == ("layer1", "layer2", "layer3", "layer4")
    assert "resnet18" in tv.list_torchvision_models()
    with pytest.raises(UsageError, match="tv:vit_b_16 cannot run on 3x32x32 images"):
        create_spec("tv:vit_b_16", 3, 32, 10)


@needs_tv
def test_train_test_and_checkpoint_of_tv_resnet18(tmp_path):
    """A real (tiny) training run; its checkpoint loads into torchvision's own module."""
    import torch
    from safetensors.numpy import load_file
    from typer.testing import CliRunner

    from cifarbench.checkpoint import load_checkpoint
    from cifarbench.cli import app
    from cifarbench.data.augment import normalize
    from conftest import write_npz

    data = "npz:" + str(write_npz(tmp_path / "tiny.npz", n_train=16, n_test=8, classes=3, size=16))
    out = tmp_path / "run"
    run = lambda *a: CliRunner().invoke(app, [*a], catch_exceptions=False)  # noqa: E731
    res = run("train", "tv:resnet18", "--dataset", data, "--epochs", "1", "-b", "8", "--eval-batch-size", "8",
              "--backend", "torch", "--device", "cpu", "--opt", "sgd", "--lr", "0.01", "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["params"] == 11_173_962 - 7 * 513  # 3x3 stem (as the 10-class count above), 3-class head
    weights = load_file(str(out / "model.safetensors"))
    ref = tv.build_torchvision_model("resnet18", 3, 16, 3)
    assert set(weights) == {k for k in ref.state_dict() if not k.endswith("num_batches_tracked")}
    momenta = {f"{k}.momentum_buffer" for k, _ in ref.named_parameters()}
    assert set(load_file(str(out / "optimizer.safetensors"))) == momenta | {"step"}
    missing, unexpected = ref.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    # torchvision's module with the checkpoint predicts what `cifarbench test` reports
    ds = np.load(tmp_path / "tiny.npz")
    meta = load_checkpoint(out).meta
    x = torch.from_numpy(normalize(ds["x_test"], meta["mean"], meta["std"]))
    with torch.no_grad():
        logits = ref.eval()(x)
    loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(ds["y_test"])))
    res = run("test", str(out), "--backend", "torch", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["correct"] == int((logits.argmax(1).numpy() == ds["y_test"]).sum())
    assert result["loss"] == pytest.approx(loss, rel=1e-4)
    res = CliRunner().invoke(app, ["test", str(out), "--backend", "numpy"])
    assert res.exit_code == 2 and "runs on the torch backend only" in res.output
    res = run("models", "--json")
    assert "tv:resnet18" in json.loads(res.stdout)["namespaces"]["tv:"]["models"]

