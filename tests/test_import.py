"""`cifarbench import`: the originals' checkpoint formats convert to weights that compute the same logits.

Each test writes a small file in an original's format (names and layouts from ANALYSIS.md and
the originals' model code), converts it, and compares our torch backend's logits with a direct
computation by the original's own framework (MLX, torch) or a NumPy restatement of its forward.
definfo pickles: assumed layout = a dict of arrays as its save_checkpoint writes (SimpleCNN:
``model.__dict__`` incl. caches and non-array attributes; ResNet32: top-level arrays plus a
``blocks_data`` list of per-block dicts), see cifarbench/importers/layouts.py.
"""

from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from cifarbench.checkpoint import load_checkpoint
from cifarbench.errors import CheckpointError, UsageError
from cifarbench.importers import convert, import_checkpoint
from cifarbench.importers.layouts import flatten_inputs
from cifarbench.models import create_spec, init_params

RNG = np.random.default_rng(7)


def _torch_backend_logits(spec, state, x):
    pytest.importorskip("torch")
    from cifarbench.backends import create_backend
    from cifarbench.backends.base import TrainOptions

    try:
        be = create_backend("torch", "cpu", TrainOptions())
    except Exception as exc:  # backend still being written
        pytest.skip(f"torch backend unavailable: {exc}")
    be.build(spec, state)
    return be.forward(x)[0]


def _random_bn_stats(state):
    """Non-trivial running statistics so that eval-mode BN is really exercised."""
    for k in list(state):
        if k.endswith("running_mean"):
            state[k] = RNG.normal(0, 0.1, state[k].shape).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = RNG.uniform(0.5, 1.5, state[k].shape).astype(np.float32)
    return state


def _to_mlx_layout(spec, state):
    """Canonical -> what MLX save_weights writes: OHWI convs, flatten in H, W, C order."""
    out = {k: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for k, v in state.items()}
    for name, (c, h, w) in flatten_inputs(spec).items():
        wt = out[f"{name}.weight"]
        out[f"{name}.weight"] = wt.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(wt.shape[0], -1)
    return out


def _menzhse_mlx_file(spec, state):
    """What menzHSE's MLX ``CNN.save_weights`` writes: MLX layout, skips named ``conv_skip2/4/6``."""
    out = {}
    for k, v in _to_mlx_layout(spec, state).items():
        head, _, rest = k.partition(".")
        out[f"conv_{head}.{rest}" if head in ("skip2", "skip4", "skip6") else k] = v
    return out


# Every tensor name menzHSE's MLX CNN (model.py, since 2023-12-24) saves: 6 convs, 6 BNs with
# running statistics, 3 conv_skip 1x1 convs, 2 linears.
MENZ_MLX_NAMES = sorted(
    [f"conv{i}.{p}" for i in range(1, 7) for p in ("weight", "bias")]
    + [f"bn{i}.{p}" for i in range(1, 7) for p in ("weight", "bias", "running_mean", "running_var")]
    + [f"conv_skip{i}.{p}" for i in (2, 4, 6) for p in ("weight", "bias")]
    + [f"fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
)


def _f32_tolerance(spec, reference):
    """Bound on |ours - theirs| for one forward pass computed twice in float32 in different orders.

    A length-n float32 dot product carries a relative rounding error of at most about n*u
    (u = eps/2); along the network the errors add up layer by layer, so the bound is
    u * (sum of fan-ins of the conv/linear layers, plus 4 ops per BN) times the largest logit
    magnitude (at least 1). Both sides round independently, hence the factor 2.
    """
    from cifarbench.models.spec import Conv, Linear

    u = np.finfo(np.float32).eps / 2
    ops = 0
    for layer in spec.param_layers():
        if isinstance(layer, Conv):
            ops += layer.cin * layer.k * layer.k
        elif isinstance(layer, Linear):
            ops += layer.fin
        else:
            ops += 4
    return 2 * u * ops * max(1.0, float(np.abs(reference).max()))


def _assert_same_state(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------------- NumPy round trips


def test_menzhse_npz_round_trip_and_metadata(tmp_path):
    spec = create_spec("cnn", 3, 32, 100)
    state = _random_bn_stats(init_params(spec, 1))
    f = tmp_path / "model_CIFAR-100_029.npz"
    np.savez(f, **_menzhse_mlx_file(spec, state))
    assert sorted(np.load(f).files) == MENZ_MLX_NAMES
    run_dir, conv = import_checkpoint(f, "menzhse", output=tmp_path / "run")
    assert (conv.model, conv.dataset, conv.framework) == ("cnn", "cifar100", "mlx")
    ck = load_checkpoint(run_dir)
    _assert_same_state(ck.state, state)
    assert ck.meta["mean"] == [0.0] * 3 and ck.meta["std"] == [1.0] * 3  # menzHSE fed x / 255
    assert ck.meta["num_classes"] == 100 and len(ck.meta["class_names"]) == 100
    side = json.loads((run_dir / "checkpoint.json").read_text())
    assert side["imported_from"] == "menzhse" and len(side["source_sha256"]) == 64
    with pytest.raises(UsageError, match="already holds"):
        import_checkpoint(f, "menzhse", output=tmp_path / "run")


def test_mike7seven_mlx_resnet18_names(tmp_path):
    spec = create_spec("resnet18")
    state = init_params(spec, 2)
    renamed = {}
    for k, v in _to_mlx_layout(spec, state).items():
        k = k.replace("downsample.", "shortcut.layers.")
        head, _, rest = k.partition(".")
        if head.startswith("layer"):
            k = f"{head}.layers.{rest}"
        renamed[k] = v
    assert "layer2.layers.0.shortcut.layers.1.running_var" in renamed
    f = tmp_path / "cifar_mlx_20260215_103051.npz"
    np.savez(f, **renamed)
    conv = convert(f, "mike7seven")
    assert conv.model == "resnet18" and conv.mean == (0.5,) * 3 and conv.std == (0.5,) * 3
    _assert_same_state(conv.state, state)


def test_wrong_model_dataset_and_source_are_refused(tmp_path):
    spec = create_spec("cnn")
    f = tmp_path / "model_CIFAR-10_001.npz"
    np.savez(f, **_menzhse_mlx_file(spec, init_params(spec)))
    with pytest.raises(CheckpointError, match="does not match model 'resnet18'"):
        convert(f, "menzhse", model="resnet18")
    with pytest.raises(CheckpointError, match="100"):
        convert(f, "menzhse", dataset="cifar100")
    with pytest.raises(UsageError, match="unknown source"):
        convert(f, "timm")
    with pytest.raises(UsageError, match="unknown model"):
        convert(f, "menzhse", model="nope")
    with pytest.raises(UsageError, match="unknown checkpoint type"):
        convert(tmp_path / "x.h5", "menzhse") if (tmp_path / "x.h5").write_bytes(b"x") else None


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_menzhse_real_names_npz_and_safetensors(tmp_path, suffix):
    from safetensors.numpy import save_file

    spec = create_spec("cnn")
    state = _random_bn_stats(init_params(spec, 3))
    f = tmp_path / f"model_CIFAR-10_030{suffix}"
    # C order: safetensors.numpy writes a transposed view's memory as is (silently wrong order)
    tensors = {k: np.ascontiguousarray(v) for k, v in _menzhse_mlx_file(spec, state).items()}
    assert sorted(tensors) == MENZ_MLX_NAMES
    np.savez(f, **tensors) if suffix == ".npz" else save_file(tensors, str(f))
    conv = convert(f, "menzhse")
    assert (conv.model, conv.dataset, conv.framework) == ("cnn", "cifar10", "mlx")
    _assert_same_state(conv.state, state)


def test_menzhse_torch_style_skip_names_still_import(tmp_path):
    spec = create_spec("cnn")
    state = init_params(spec, 4)
    f = tmp_path / "model_CIFAR-10_001.npz"
    np.savez(f, **_to_mlx_layout(spec, state))  # skip2/4/6, as the torch sibling names them
    _assert_same_state(convert(f, "menzhse").state, state)
    both = {**_to_mlx_layout(spec, state), "conv_skip2.weight": np.zeros((32, 1, 1, 32), np.float32)}
    np.savez(f, **both)
    with pytest.raises(CheckpointError, match="both skip2.weight and conv_skip2.weight"):
        convert(f, "menzhse")


def test_safetensors_with_unknown_names_is_refused_in_one_line(tmp_path):
    from safetensors.numpy import save_file
    from typer.testing import CliRunner

    from cifarbench.cli import app

    f = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": np.zeros((4, 4), np.float32), "head.bias": np.zeros(4, np.float32)}, str(f))
    with pytest.raises(CheckpointError) as err:
        convert(f, "menzhse")
    msg = str(err.value)
    assert "missing conv1.weight" in msg and "encoder.weight, head.bias" in msg and "\n" not in msg
    res = CliRunner().invoke(app, ["import", str(f), "--from", "menzhse", "-o", str(tmp_path / "r")])
    assert res.exit_code == 1 and "encoder.weight" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")  # no JSON header at all
    with pytest.raises(CheckpointError, match="broken.safetensors is corrupt or not a .safetensors file"):
        convert(bad, "menzhse")
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{ broken")  # a header that safetensors rejects
    with pytest.raises(CheckpointError, match="cannot read .* as .safetensors"):
        convert(bad, "menzhse")


# ---------------------------------------------------------------------------- MLX: the real writer


def _mlx_menz_cnn(nn, mx, classes, skips):
    """menzHSE's CNN (and mike7seven's SmallCNN) restated in MLX, NHWC, per ANALYSIS.md 1.3."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
            for i, (a, b) in enumerate(chans, start=1):
                setattr(self, f"conv{i}", nn.Conv2d(a, b, 3, padding=1))
                setattr(self, f"bn{i}", nn.BatchNorm(b))
            for s, ch in zip(skips, (32, 64, 128)):
                setattr(self, s, nn.Conv2d(ch, ch, 1))
            self.pool = nn.MaxPool2d(2, 2)
            self.fc1 = nn.Linear(2048, 128)
            self.fc2 = nn.Linear(128, classes)

        def __call__(self, x):
            for blk, s in enumerate(skips):
                a, b = 2 * blk + 1, 2 * blk + 2
                x = nn.relu(getattr(self, f"bn{a}")(getattr(self, f"conv{a}")(x)))
                x = getattr(self, s)(x) + nn.relu(getattr(self, f"bn{b}")(getattr(self, f"conv{b}")(x)))
                x = self.pool(x)
            x = x.reshape(x.shape[0], -1)
            return self.fc2(nn.relu(self.fc1(x)))

    return Net()


def _mlx_resnet18(nn, mx, classes):
    """mike7seven's MLX ResNet-18 restated (ANALYSIS.md 2.3): Sequential layers, Sequential shortcut."""

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm(cout)
            self.proj = stride != 1 or cin != cout
            if self.proj:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm(cout))

        def __call__(self, x):
            out = self.bn2(self.conv2(nn.relu(self.bn1(self.conv1(x)))))
            return nn.relu(out + (self.shortcut(x) if self.proj else x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm(64)
            cin = 64
            for i, (w, s) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
                setattr(self, f"layer{i}", nn.Sequential(Block(cin, w, s), Block(w, w, 1)))
                cin = w
            self.fc = nn.Linear(512, classes)

        def __call__(self, x):
            x = nn.relu(self.bn1(self.conv1(x)))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(mx.mean(x, axis=(1, 2)))

    return Net()


def _mlx_randomise_bn(model, mx):
    from mlx.utils import tree_flatten, tree_unflatten

    upd = []
    for k, v in tree_flatten(model.parameters()):
        if k.endswith("running_mean"):
            upd.append((k, mx.array(RNG.normal(0, 0.1, v.shape).astype(np.float32))))
        elif k.endswith("running_var"):
            upd.append((k, mx.array(RNG.uniform(0.5, 1.5, v.shape).astype(np.float32))))
    model.update(tree_unflatten(upd))


@pytest.mark.parametrize("source,skips,classes,suffix", [
    ("menzhse", ("conv_skip2", "conv_skip4", "conv_skip6"), 10, ".npz"),
    ("menzhse", ("conv_skip2", "conv_skip4", "conv_skip6"), 100, ".safetensors"),
    ("mike7seven", ("skip1", "skip2", "skip3"), 100, ".npz"),
])
def test_mlx_small_cnn_same_logits(tmp_path, source, skips, classes, suffix):
    mx = pytest.importorskip("mlx.core")
    nn = pytest.importorskip("mlx.nn")
    model = _mlx_menz_cnn(nn, mx, classes, skips)
    _mlx_randomise_bn(model, mx)
    model.eval()
    x = RNG.standard_normal((3, 32, 32, 3)).astype(np.float32)
    want = np.array(model(mx.array(x)))
    f = tmp_path / f"model_CIFAR-{classes}_030{suffix}"
    model.save_weights(str(f))  # MLX picks .npz or .safetensors from the suffix
    if source == "menzhse":
        from safetensors.numpy import load_file

        saved = sorted(np.load(f).files) if suffix == ".npz" else sorted(load_file(str(f)))
        assert saved == MENZ_MLX_NAMES
    conv = convert(f, source)
    assert conv.model == "cnn" and conv.dataset == ("cifar100" if classes == 100 else "cifar10")
    spec = create_spec("cnn", 3, 32, classes)
    got = _torch_backend_logits(spec, conv.state, x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(got, want, rtol=0, atol=_f32_tolerance(spec, want))


def test_mlx_resnet18_same_logits(tmp_path):
    mx = pytest.importorskip("mlx.core")
    nn = pytest.importorskip("mlx.nn")
    model = _mlx_resnet18(nn, mx, 10)
    _mlx_randomise_bn(model, mx)
    model.eval()
    x = RNG.standard_normal((2, 32, 32, 3)).astype(np.float32)
    want = np.array(model(mx.array(x)))
    f = tmp_path / "cifar_mlx.npz"
    model.save_weights(str(f))
    conv = convert(f, "mike7seven")
    assert conv.model == "resnet18"
    got = _torch_backend_logits(create_spec("resnet18"), conv.state, x.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- torch .pth


def _menz_torch_cnn(torch, classes):
    """menzHSE/torch-cifar-10-cnn's CNN restated (leaky ReLU everywhere, ANALYSIS.md 1.1/1.3)."""
    nn, F = torch.nn, torch.nn.functional

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
            for i, (a, b) in enumerate(chans, start=1):
                setattr(self, f"conv{i}", nn.Conv2d(a, b, 3, padding=1))
                setattr(self, f"bn{i}", nn.BatchNorm2d(b))
            for i, ch in zip((2, 4, 6), (32, 64, 128)):
                setattr(self, f"skip{i}", nn.Conv2d(ch, ch, 1))
            self.fc1, self.fc2 = nn.Linear(2048, 128), nn.Linear(128, classes)

        def forward(self, x):
            for a, b in ((1, 2), (3, 4), (5, 6)):
                x = F.leaky_relu(getattr(self, f"bn{a}")(getattr(self, f"conv{a}")(x)))
                x = getattr(self, f"skip{b}")(x) + F.leaky_relu(getattr(self, f"bn{b}")(getattr(self, f"conv{b}")(x)))
                x = F.max_pool2d(x, 2, 2)
            return self.fc2(F.leaky_relu(self.fc1(torch.flatten(x, 1))))

    return CNN()


def _randomise_torch_bn(torch, model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(123)


def test_menzhse_pth_same_logits(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = _menz_torch_cnn(torch, 100)
    _randomise_torch_bn(torch, model)
    model.eval()
    x = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    f = tmp_path / "model_CIFAR-100.pth"
    torch.save(model.state_dict(), f)
    conv = convert(f, "menzhse")
    assert (conv.model, conv.dataset, conv.framework) == ("cnn-leaky", "cifar100", "torch")
    assert not any("num_batches_tracked" in k for k in conv.state)
    got = _torch_backend_logits(create_spec("cnn-leaky", 3, 32, 100), conv.state, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mike7seven_lenet_pth_same_logits(tmp_path):
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class Net(nn.Module):  # the PyTorch CIFAR-10 tutorial net
        def __init__(self):
            super().__init__()
            self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = torch.flatten(self.pool(F.relu(self.conv2(x))), 1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    torch.manual_seed(1)
    net = Net().eval()
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    f = tmp_path / "cifar_net_20260208_101010.pth"
    torch.save(net.state_dict(), f)
    conv = convert(f, "mike7seven")
    assert conv.model == "lenet" and conv.mean == (0.5,) * 3
    np.testing.assert_allclose(_torch_backend_logits(create_spec("lenet"), conv.state, x), want, rtol=1e-4, atol=1e-5)


def test_mike7seven_resnet18_pth(tmp_path):
    torch = pytest.importorskip("torch")
    spec = create_spec("resnet18", 3, 32, 100)
    state = init_params(spec, 4)
    sd = {k: torch.from_numpy(v) for k, v in state.items()}
    sd.update({k.replace("running_mean", "num_batches_tracked"): torch.tensor(5) for k in state if k.endswith("running_mean")})
    f = tmp_path / "cifar_net.pth"
    torch.save(sd, f)
    run_dir, conv = import_checkpoint(f, "mike7seven", output=tmp_path / "r")
    assert conv.model == "resnet18" and conv.dataset == "cifar100"
    ck = load_checkpoint(run_dir)
    _assert_same_state(ck.state, state)
    assert ck.meta["mean"] == [0.5] * 3 and ck.meta["std"] == [0.5] * 3


class _NotATensor:  # pickled by reference: loading it needs full unpickling
    def __init__(self):
        self.epoch = 3


def test_pth_needing_full_unpickling_is_refused_unless_trusted(tmp_path):
    torch = pytest.importorskip("torch")
    spec = create_spec("lenet")
    sd = {k: torch.from_numpy(v) for k, v in init_params(spec).items()}
    f = tmp_path / "net.pth"
    torch.save({"state_dict": sd, "extra": _NotATensor()}, f)
    with pytest.raises(CheckpointError, match="full unpickling") as err:
        convert(f, "mike7seven")
    assert "--trust-pickle" in str(err.value)
    conv = convert(f, "mike7seven", trust_pickle=True)
    _assert_same_state(conv.state, init_params(spec))


# ---------------------------------------------------------------------------- definfo .pkl


def _conv_nchw(x, w, b, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w) + b[None, :, None, None]


def _maxpool2(x):
    n, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _Optimizer:  # stands in for definfo's AdamOptimizer object inside model.__dict__
    def __init__(self):
        self.lr, self.m = 0.01, {"conv1_w": np.ones(3)}


def _definfo_simplecnn_dict(rng):
    d = {
        "name": "SimpleCNN", "dropout_rate": 0.6, "training": False, "optimizer_type": "sgd", "lr": 0.015,
        "conv1_w": rng.normal(0, 0.1, (16, 3, 3, 3)), "conv1_b": rng.normal(0, 0.1, 16),
        "conv2_w": rng.normal(0, 0.1, (32, 16, 3, 3)), "conv2_b": rng.normal(0, 0.1, 32),
        "fc1_w": rng.normal(0, 0.05, (1152, 256)), "fc1_b": rng.normal(0, 0.1, 256),
        "fc2_w": rng.normal(0, 0.1, (256, 128)), "fc2_b": rng.normal(0, 0.1, 128),
        "fc3_w": rng.normal(0, 0.1, (128, 10)), "fc3_b": rng.normal(0, 0.1, 10),
        "optimizer": _Optimizer(), "_checkpoint_accuracy": 65.98,
    }
    d = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in d.items()}
    d["d_conv1_w"] = np.zeros_like(d["conv1_w"])  # gradients and caches are saved too
    d["pool1_cache"] = (np.zeros((1, 16, 30, 30), np.float32), np.zeros((1, 16, 15, 15), np.int64))
    return d


def _definfo_simplecnn_forward(d, x):
    a = _maxpool2(np.maximum(_conv_nchw(x, d["conv1_w"], d["conv1_b"]), 0))
    a = _maxpool2(np.maximum(_conv_nchw(a, d["conv2_w"], d["conv2_b"]), 0))
    a = a.reshape(len(x), -1)
    a = np.maximum(a @ d["fc1_w"] + d["fc1_b"], 0)
    a = np.maximum(a @ d["fc2_w"] + d["fc2_b"], 0)
    return _softmax(a @ d["fc3_w"] + d["fc3_b"])


def test_definfo_simplecnn_same_probabilities(tmp_path):
    d = _definfo_simplecnn_dict(np.random.default_rng(0))
    f = tmp_path / "cnn_best.pkl"
    f.write_bytes(pickle.dumps(d))
    with pytest.raises(CheckpointError, match="refusing to unpickle") as err:
        convert(f, "definfo")
    assert "--trust-pickle" in str(err.value)
    run_dir, conv = import_checkpoint(f, "definfo", trust_pickle=True, output=tmp_path / "run")
    assert (conv.model, conv.dataset, conv.framework) == ("simplecnn", "cifar10", "numpy")
    assert load_checkpoint(run_dir).meta["std"] == [1.0] * 3
    x = np.random.default_rng(1).uniform(0, 1, (4, 3, 32, 32)).astype(np.float32)  # definfo fed x / 255
    want = _definfo_simplecnn_forward(d, x)
    got = _softmax(_torch_backend_logits(create_spec("simplecnn"), conv.state, x).astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _definfo_resnet_dict(state):
    """Canonical resnet32-definfo weights -> definfo's ResNet32 checkpoint layout."""
    col = lambda v: v.reshape(1, -1, 1, 1)
    d = {"name": "ResNet32", "dropout_rate": 0.3, "init_conv_w": state["conv1.weight"], "init_conv_b": state["conv1.bias"],
         "init_bn_gamma": col(state["bn1.weight"]), "init_bn_beta": col(state["bn1.bias"]),
         "fc_w": state["fc.weight"].T.copy(), "fc_b": state["fc.bias"], "blocks_data": []}
    for i in range(15):
        p = f"layer{i // 5 + 1}.{i % 5}."
        b = {"downsample": f"{p}downsample.0.weight" in state, "stride": 2 if i in (5, 10) else 1,
             "z1": np.zeros((2, 2), np.float32)}  # a cached activation, ignored
        for j in (1, 2):
            b.update({f"conv{j}_w": state[f"{p}conv{j}.weight"], f"conv{j}_b": state[f"{p}conv{j}.bias"],
                      f"bn{j}_gamma": col(state[f"{p}bn{j}.weight"]), f"bn{j}_beta": col(state[f"{p}bn{j}.bias"])})
        if b["downsample"]:
            b.update({"shortcut_w": state[f"{p}downsample.0.weight"], "shortcut_b": state[f"{p}downsample.0.bias"],
                      "shortcut_bn_gamma": col(state[f"{p}downsample.1.weight"]),
                      "shortcut_bn_beta": col(state[f"{p}downsample.1.bias"])})
        d["blocks_data"].append(b)
    return d


def test_definfo_resnet32_layout(tmp_path):
    spec = create_spec("resnet32-definfo")
    state = init_params(spec, 5)
    f = tmp_path / "resnet32_best.pkl"
    f.write_bytes(pickle.dumps(_definfo_resnet_dict(state)))
    conv = convert(f, "definfo", trust_pickle=True)
    assert conv.model == "resnet32-definfo"
    _assert_same_state(conv.state, state)  # init_params has BN stats 0/1, which the importer also sets
    assert any("running statistics" in n for n in conv.notes)


def _fake_cupy_pickle(obj_arrays):
    """A pickle as CuPy writes it: arrays rebuilt by a cupy function from NumPy data."""
    mods = {n: types.ModuleType(n) for n in ("cupy", "cupy._core", "cupy._core.core")}

    def array(a):
        return a

    array.__module__, array.__qualname__ = "cupy._core.core", "array"
    mods["cupy._core.core"].array = array

    class CupyLike:
        def __init__(self, a):
            self.a = a

        def __reduce__(self):
            return (array, (self.a,))

    saved = {n: sys.modules.get(n) for n in mods}
    sys.modules.update(mods)
    try:
        return pickle.dumps({k: CupyLike(v) if isinstance(v, np.ndarray) else v for k, v in obj_arrays.items()})
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_definfo_cupy_pickle_loads_without_cupy(tmp_path):
    d = _definfo_simplecnn_dict(np.random.default_rng(2))
    d.pop("optimizer"), d.pop("pool1_cache")
    f = tmp_path / "cnn_epoch3.pkl"
    f.write_bytes(_fake_cupy_pickle(d))
    assert "cupy" not in sys.modules or hasattr(sys.modules["cupy"], "cuda")
    conv = convert(f, "definfo", trust_pickle=True)
    np.testing.assert_array_equal(conv.state["fc1.weight"], d["fc1_w"].T)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_trusted_pickle_still_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps({"conv1_w": _Evil(marker)}))
    with pytest.raises(CheckpointError, match="refusing to load"):
        convert(f, "definfo", trust_pickle=True)
    assert not marker.exists()


# ---------------------------------------------------------------------------- the command


def test_cli_import_and_errors(tmp_path):
    from typer.testing import CliRunner

    from cifarbench.cli import app

    spec = create_spec("cnn")
    f = tmp_path / "model_CIFAR-10_029.npz"
    np.savez(f, **_menzhse_mlx_file(spec, init_params(spec)))
    runner = CliRunner()
    res = runner.invoke(app, ["import", str(f), "--from", "menzhse", "-o", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["model"] == "cnn" and out["dataset"] == "cifar10" and out["mean"] == [0.0] * 3
    assert (tmp_path / "run" / "model.safetensors").is_file()
    pkl = tmp_path / "cnn_best.pkl"
    pkl.write_bytes(pickle.dumps(_definfo_simplecnn_dict(np.random.default_rng(0))))
    res = runner.invoke(app, ["import", str(pkl), "--from", "definfo", "-o", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "trust-pickle" in res.output
    res = runner.invoke(app, ["import", str(f), "--from", "nobody"])
    assert res.exit_code == 2 and "unknown source" in res.output


def test_menzhse_finetune_checkpoint_is_explained(tmp_path):
    torch = pytest.importorskip("torch")
    f = tmp_path / "model_resnet50_CIFAR-100_009.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, f)
    with pytest.raises(CheckpointError, match="finetune"):
        convert(f, "menzhse")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_both_torch_containers_pass_the_magic_check_and_impostors_do_not(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    from cifarbench.importers.readers import check_container, read_any

    f = tmp_path / "w.pth"
    torch.save({"w": torch.arange(3.0)}, f, _use_new_zipfile_serialization=zip_format)
    check_container(f, "pth")
    np.testing.assert_array_equal(read_any(f, False)[1]["w"], [0.0, 1.0, 2.0])
    np.savez(tmp_path / "x.npz", w=np.zeros(2))
    impostors = {"pickle.pth": pickle.dumps({"w": 1}, protocol=2), "cut.pth": f.read_bytes()[:40],
                 "npz.pth": (tmp_path / "x.npz").read_bytes()}  # npz: a zip, but no data.pkl
    for name, data in impostors.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name} is corrupt or not a PyTorch file"):
            read_any(tmp_path / name, True)
