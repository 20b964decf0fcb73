"""menzHSE's fine-tuning (``--finetune``): ImageNet ResNets, padded max-pool, on-device resize,
torchvision's weights fetched from a loopback server, on every backend."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cifarbench.backends.base import TrainOptions
from cifarbench.backends.resize import reference_resize, resize_matrix, resize_plan
from cifarbench.data import fetch as fetch_mod
from cifarbench.errors import CifarbenchError
from cifarbench.models import create_spec, init_params
from cifarbench.models import pretrained as P
from cifarbench.models import spec as S
from conftest import invoke, write_npz

EPS32 = float(np.finfo(np.float32).eps)
BACKENDS = ("torch", "numpy", "jax", "mlx")


def backend(name: str, options: TrainOptions):
    """A CPU backend, or a skip when its framework is not installed."""
    pytest.importorskip({"numpy": "numpy", "torch": "torch", "jax": "jax", "mlx": "mlx.core"}[name])
    from cifarbench.backends import create_backend

    return create_backend(name, "cpu", options)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


# ----- the architectures ------------------------------------------------------------------------

# torchvision's resnet18/34/50 (1000 classes), and ANALYSIS.md 1.3's counts with 10 and 100 classes
COUNTS = {"resnet18-imagenet": (11_689_512, 11_181_642, 11_227_812),
          "resnet34-imagenet": (21_797_672, 21_289_802, 21_335_972),
          "resnet50-imagenet": (25_557_032, 23_528_522, 23_712_932)}


@pytest.mark.parametrize("name", COUNTS)
def test_parameter_counts_equal_torchvision(name):
    for classes, count in zip((1000, 10, 100), COUNTS[name]):
        assert create_spec(name, 3, 224, classes).num_params() == count
    spec = create_spec(name, 3, 224, 1000)
    shapes = {**spec.param_shapes(), **spec.buffer_shapes()}
    # torchvision's state-dict keys (its resnet.py module names), less num_batches_tracked
    assert shapes["conv1.weight"] == (64, 3, 7, 7) and shapes["bn1.running_var"] == (64,)
    assert shapes["layer2.0.downsample.0.weight"][1:] in ((64, 1, 1), (256, 1, 1))
    assert shapes["fc.weight"] == (1000, 2048 if "50" in name else 512) and "fc.bias" in shapes
    tv = pytest.importorskip("torchvision") if os.environ.get("CIFARBENCH_TEST_TORCHVISION") else None
    if tv is not None:  # where torchvision is installed: the very same keys and shapes
        net = getattr(tv.models, name.split("-")[0])()
        ref = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert ref == shapes


def test_macs_are_the_published_figures():
    from cifarbench.models.summary import summarize

    # torchvision's model cards (1.81 / 3.66 / 4.09 GFLOPS, counted as MACs) and menzHSE's README
    # (ResNet-50 on CIFAR-100: 4.09 G mult-adds at 224 px)
    for name, classes, gmacs in (("resnet18-imagenet", 1000, 1.81), ("resnet34-imagenet", 1000, 3.66),
                                 ("resnet50-imagenet", 100, 4.09)):
        assert round(summarize(create_spec(name, 3, 224, classes)).macs / 1e9, 2) == gmacs, name


def test_summary_cli_shows_menzhse_count():
    res = invoke(["models", "--summary", "resnet34-imagenet"])
    assert res.exit_code == 0 and "21,289,802" in res.output


def test_stem_is_imagenet_and_shapes_chain():
    from cifarbench.models.shapes import capture_shapes

    spec = create_spec("resnet18-imagenet", 3, 224, 10)
    stem = spec.layers[0]
    assert isinstance(stem.layers[-1], S.MaxPool) and stem.layers[-1].pad == 1 and stem.layers[0].k == 7
    caps = capture_shapes(spec)
    assert caps["stem"] == (64, 56, 56) and caps["layer4"] == (512, 7, 7)


# ----- max-pool padding on every backend -----------------------------------------------------------

POOL_SPEC = S.ModelSpec("pool-test", (
    S.Group("body", (S.Conv("conv", 3, 4, 3, pad=1, bias=True), S.MaxPool(3, 2, pad=1))),
    S.Flatten(), S.Linear("fc", 4 * 5 * 5, 3),
), in_channels=3, image_size=9, num_classes=3)


def test_padded_maxpool_forward_on_every_backend():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    state = init_params(POOL_SPEC, seed=1)
    state["conv.bias"] = np.full(4, -3.0, np.float32)  # negative maps: zero padding would win at the borders
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    t = {k: torch.tensor(v) for k, v in state.items()}
    y = F.max_pool2d(F.conv2d(torch.tensor(x), t["conv.weight"], t["conv.bias"], padding=1), 3, 2, 1)
    ref = (y.flatten(1) @ t["fc.weight"].T + t["fc.bias"]).numpy()
    body_ref = y.numpy()
    assert body_ref.max() < 0  # the case where -inf and 0 padding differ
    for name in BACKENDS:
        be = backend(name, TrainOptions())
        be.build(POOL_SPEC, state)
        logits, caps = be.forward(x, capture=("body",))
        # a conv of 27 products then a pick: float32 sums of 27 terms, bound 27 eps relative
        assert rel(caps["body"], body_ref) < 27 * EPS32, name
        assert rel(logits, ref) < 2 * 100 * EPS32, name


def test_padded_maxpool_backward_numpy_matches_torch():
    torch = pytest.importorskip("torch")
    from cifarbench.backends.numpy_backend import layers as L

    x = np.random.default_rng(1).standard_normal((2, 7, 7, 3)).astype(np.float32) - 2.0
    y, cache = L.maxpool_forward(x, 3, 2, 1)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    dx = L.maxpool_backward(dy, cache, 3, 2, 1)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    assert y.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    # overlapping windows add up to 4 gradients per pixel: float32 sums of <= 4 terms
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=4 * EPS32 * np.abs(dy).max())


# ----- resize on the device ------------------------------------------------------------------------


def test_reference_resize_is_torch_interpolate_then_centre_crop():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    assert resize_plan(224, 0.875) == (256, 224) and resize_plan(None) is None
    x = np.random.default_rng(3).random((2, 3, 32, 32)).astype(np.float32)
    up = F.interpolate(torch.tensor(x), size=(256, 256), mode="bilinear", align_corners=False, antialias=False)
    want = up[:, :, 16:240, 16:240].numpy()
    ours = reference_resize(x, 256, 224)
    # torch interpolates in float32: 3 lerps of values in [0, 1], a few roundings each
    assert np.abs(ours - want).max() < 8 * EPS32
    # the matrix form the backends use is the same map
    r = resize_matrix(32, 256, 224).astype(np.float64)
    assert np.abs(r @ x.astype(np.float64) @ r.T - ours).max() < 4 * EPS32
    assert resize_matrix(32, 256, 224).shape == (224, 32)


def identity_head_spec(channels: int, crop: int) -> tuple[S.ModelSpec, dict]:
    """Flatten + an identity Linear: the logits ARE the batch the backend prepared (C, H, W order)."""
    n = channels * crop * crop
    spec = S.ModelSpec("identity", (S.Flatten(), S.Linear("fc", n, n, bias=False)), channels, crop, n)
    return spec, {"fc.weight": np.eye(n, dtype=np.float32)}


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_resizes_like_the_reference(name):
    size, crop = 13, 10  # from 8 px: a non-integer scale and an off-centre-by-rounding crop (top 2)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = np.random.default_rng(4).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    spec, state = identity_head_spec(3, crop)
    be = backend(name, TrainOptions(mean=mean, std=std, resize=(size, crop)))
    be.build(spec, state)
    be.set_data("test", x, np.zeros(5, np.int64))
    got = be.predict("test", 2).reshape(5, 3, crop, crop)
    norm = (x.transpose(0, 3, 1, 2) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    want = reference_resize(norm, size, crop)
    # float32: normalising (3 roundings) then two matmuls with two non-zero weights a row (4 roundings)
    # and the float32 weights themselves: under 8 roundings of the largest value
    assert np.abs(got - want).max() < 8 * EPS32 * np.abs(want).max(), name


# ----- torchvision's weights from a loopback server ------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def weight_server(tmp_path_factory):
    """A random resnet18 state dict in torchvision's layout (torch.save), served on loopback.

    Yields (base URL, served folder, file name, the file's tensors as NumPy)."""
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("weights-served")
    spec = create_spec("resnet18-imagenet", 3, 224, 1000)
    rng = np.random.default_rng(5)
    tensors: dict[str, np.ndarray] = {}
    for layer in spec.param_layers():
        if isinstance(layer, S.BatchNorm):
            c = layer.ch
            for k, v in (("weight", rng.uniform(0.5, 1.5, c)), ("bias", rng.normal(0, 0.1, c)),
                         ("running_mean", rng.normal(0, 0.1, c)), ("running_var", rng.uniform(0.5, 1.5, c))):
                tensors[f"{layer.name}.{k}"] = v.astype(np.float32)
            continue
        for k, shape in S.layer_param_shapes(layer).items():
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            tensors[k] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    sd = {}
    for k, v in tensors.items():
        sd[k] = torch.from_numpy(v)
        if k.endswith(".running_var"):  # torchvision's BN counter, which the canonical format leaves out
            sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0, dtype=torch.int64)
    tmp = root / "tmp.pth"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    tmp.rename(root / name)
    (root / "resnet18-00000000.pth").write_bytes((root / name).read_bytes())  # a file its name's hash does not fit
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, name, tensors
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def served(weight_server, monkeypatch, tmp_path):
    """The served file as resnet18-imagenet's weights, the cache in tmp_path."""
    url, root, name, tensors = weight_server
    monkeypatch.setitem(P.WEIGHT_FILES, "resnet18-imagenet", name)
    monkeypatch.setenv(P.MIRROR_ENV, url)
    monkeypatch.setenv("CIFARBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch_mod, "BACKOFF_S", 0.0)
    return url, root, name, tensors


def test_pretrained_loads_into_every_backend_and_logits_agree(served, monkeypatch):
    _, _, name, tensors = served
    spec = create_spec("resnet18-imagenet", 3, 32, 10)  # the weights fit any input size; 32 px keeps it quick
    notes = []
    state = P.pretrained_state(spec, seed=0, note=notes.append)
    assert (P.weights_dir() / name).is_file() and (P.weights_dir() / name).with_suffix(".safetensors").is_file()
    assert len(notes) == 1 and "new 512->10 head" in notes[0]
    fresh = init_params(spec, 0)
    for k, v in state.items():
        if k.startswith("fc."):
            np.testing.assert_array_equal(v, fresh[k])  # a new head, initialised as any other
        else:
            np.testing.assert_array_equal(v, tensors[k])
    # without torch, the safetensors copy the first read wrote gives the same state
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
        again = P.pretrained_state(spec, seed=0)
        assert set(again) == set(state) and all(np.array_equal(again[k], state[k]) for k in state)
        (P.weights_dir() / name).with_suffix(".safetensors").unlink()
        with pytest.raises(CifarbenchError, match="needs torch .* or its safetensors copy"):
            P.pretrained_state(spec, seed=0)
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits = {}
    for b in BACKENDS:
        be = backend(b, TrainOptions())
        be.build(spec, state)
        back = be.state_dict()
        assert all(np.array_equal(back[k], state[k]) for k in state), b
        logits[b] = be.forward(x)[0]
    diffs = {b: rel(v, logits["torch"]) for b, v in logits.items()}
    print("resnet18-imagenet logits, relative to torch:", {b: f"{d:.1e}" for b, d in diffs.items()})
    # DESIGN.md's parity bound for float32 backends (the zoo's parity tests use the same)
    assert max(diffs.values()) < 1e-4, diffs


def test_bad_hash_and_missing_file_are_one_line_errors_leaving_nothing(served, monkeypatch):
    url, root, _, _ = served
    spec = create_spec("resnet18-imagenet", 3, 32, 10)
    monkeypatch.setitem(P.WEIGHT_FILES, "resnet18-imagenet", "resnet18-00000000.pth")
    with pytest.raises(CifarbenchError, match="sha256 .* does not start with the expected 00000000") as err:
        P.pretrained_state(spec, 0)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(P.WEIGHT_FILES, "resnet18-imagenet", "resnet18-abcdef12.pth")
    with pytest.raises(CifarbenchError, match="HTTP 404"):
        P.pretrained_state(spec, 0)
    assert not any(P.weights_dir().iterdir())  # neither file, nor a temp file


def test_killed_download_leaves_no_file_and_next_run_cleans_up(served):
    url, _, name, _ = served
    code = ("import cifarbench.models.pretrained as P; from cifarbench.data import fetch; fetch.BACKOFF_S = 0; "
            f"P.WEIGHT_FILES['resnet18-imagenet'] = {name!r}; P.download('resnet18-imagenet')")
    env = {**os.environ, "CIFARBENCH_TEST_KILL_AT": "download"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9  # SIGKILL at the write point: the whole body in the temp file, not renamed
    folder = P.weights_dir()
    assert not (folder / name).exists() and any(p.name.endswith(".part") for p in folder.iterdir())
    path = P.download("resnet18-imagenet")
    assert path == folder / name and [p.name for p in folder.iterdir()] == [name]
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(name[9:17])


# ----- the command line -----------------------------------------------------------------------------


def test_home_recipe_and_finetune_alias():
    res = invoke(["train", "resnet34-imagenet", "--print-config"])
    assert res.exit_code == 0, res.output
    text = res.output
    for line in ("model: resnet34-imagenet", "pretrained: true", "image_size: 224", "crop_pct: 0.875",
                 "opt: adamw", "lr: 0.0003", "batch_size: 128", "normalize: imagenet"):
        assert line in text, line
    assert "model default (finetune-resnet34)" in text
    alias = invoke(["train", "--finetune", "resnet50", "--print-config"])
    assert alias.exit_code == 0 and "model: resnet50-imagenet" in alias.output and "pretrained: true" in alias.output
    bad = invoke(["train", "--finetune", "resnet99"])
    assert bad.exit_code == 2 and "unknown --finetune model 'resnet99'" in bad.output
    clash = invoke(["train", "cnn", "--finetune", "resnet18"])
    assert clash.exit_code == 2 and "--finetune resnet18 trains resnet18-imagenet" in clash.output
    nope = invoke(["train", "cnn", "--pretrained", "--dataset", "synthetic"])
    assert nope.exit_code == 2 and "no pretrained weights for model 'cnn'" in nope.output
    crop = invoke(["train", "cnn", "--crop-pct", "0.5", "--print-config"])
    assert crop.exit_code == 2 and "crop_pct needs image_size" in crop.output


def test_fast_dev_run_finetunes_then_tests_at_the_resized_size(served, tmp_path, monkeypatch):
    data = "npz:" + str(write_npz(tmp_path / "tiny.npz", n_train=32, n_test=16, classes=4))
    run = tmp_path / "run"
    args = ["train", "--finetune", "resnet18", "--dataset", data, "--backend", "numpy", "--image-size", "40",
            "--crop-pct", "0.8", "--fast-dev-run", "-b", "4", "-o", str(run), "--no-record"]
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert "new 512->4 head" in res.output and "resize to 40 px" in res.output
    from cifarbench import checkpoint as ckpt

    loaded = ckpt.load_checkpoint(run)
    assert loaded.meta["image_size"] == 40 and loaded.meta["resize"] == [50, 40]
    assert loaded.meta["mean"] == [0.485, 0.456, 0.406]
    test = invoke(["test", str(run), "--dataset", data, "--backend", "numpy", "--json"])
    assert test.exit_code == 0, test.output
    assert json.loads(test.stdout)["total_parameters"] == 11_178_564  # resnet18 with a 4-class head
    # activations show what the model saw: the stem's map of the resized 40 px input is 10x10 (8x8 from 32 px)
    from cifarbench.report import activations as A, plots

    shapes = []
    monkeypatch.setattr(plots, "feature_grid", lambda act, title, path, channels: shapes.append(act.shape) or path)
    monkeypatch.setattr(plots, "input_image", lambda img, title, path: path)
    A.render_activations(run, "numpy", None, 0, 0, None, tmp_path / "act", 4)
    assert shapes[0] == (64, 10, 10)


def test_download_failure_through_the_cli_is_one_line(served, monkeypatch, tmp_path):
    monkeypatch.setitem(P.WEIGHT_FILES, "resnet18-imagenet", "resnet18-00000000.pth")
    data = "npz:" + str(write_npz(tmp_path / "tiny.npz", n_train=16, n_test=8, classes=4))
    res = invoke(["train", "--finetune", "resnet18", "--dataset", data, "--backend", "numpy", "--fast-dev-run"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if "sha256" in ln]
    assert len(lines) == 1 and "could not download resnet18-00000000.pth" in lines[0], res.output
    assert not any(P.weights_dir().iterdir())
