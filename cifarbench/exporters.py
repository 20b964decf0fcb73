"""`cifarbench export`: a run directory -> the file an original project's scripts load, or ONNX.

The inverse of ``cifarbench.importers``: canonical names and PyTorch layout are mapped to what
each original writes (names, conv layout, flatten order, container), so its own ``test.py`` or
``load_checkpoint`` runs the weights, and ``cifarbench import`` of the exported file gives back
the same tensors and the same test accuracy.

The originals fed their networks fixed input scalings (menzHSE and definfo ``x / 255``,
mike7seven ``(x / 255 - 0.5) / 0.5``); a run trained with another normalisation cannot be
expressed in their files without changing what the first layer computes at the image border
(zero padding), so such an export is refused with the recipe that fits. ONNX carries the run's
own normalisation inside the graph: its input is float32 pixels in [0, 1], N x C x H x W.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench import atomic
from cifarbench.errors import CheckpointError, UsageError, unknown_name
from cifarbench.importers import NORMALISATION
from cifarbench.importers.layouts import flatten_inputs

TARGETS = ("menzhse", "mike7seven", "definfo", "onnx")
# target -> model -> (framework of the file, suffix): the first entry is the default framework
FORMATS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "menzhse": {"cnn": (("mlx", ".npz"),), "cnn-leaky": (("torch", ".pth"),)},
    "mike7seven": {
        "resnet18": (("torch", ".pth"), ("mlx", ".npz")),
        "lenet": (("torch", ".pth"),),
        "lenet-large": (("torch", ".pth"),),
        "cnn": (("mlx", ".npz"),),
    },
    "definfo": {"simplecnn": (("numpy", ".pkl"),)},
}
NORMALIZE_FLAG = {NORMALISATION["menzhse"]: "none", NORMALISATION["mike7seven"]: "half"}
WHY_NOT = {
    ("definfo", "resnet32-definfo"): "definfo's ResNet32 keeps no BatchNorm running statistics (it evaluates "
                                     "with batch statistics), so exported weights would not predict as they do here",
}


@dataclass
class Exported:
    path: Path
    target: str
    framework: str  # what reads the file: mlx, torch, numpy or onnxruntime
    model: str
    dataset: str
    tensors: int
    notes: list[str] = field(default_factory=list)


def export_run(run: str | Path, target: str, output: str | Path | None = None, framework: str | None = None,
               overwrite: bool = False) -> Exported:
    from cifarbench.checkpoint import load_checkpoint

    target = target.lower()
    if target not in TARGETS:
        raise unknown_name("export target", target, TARGETS)
    ck = load_checkpoint(run)
    model, meta = ck.model, ck.meta
    if target == "onnx":
        if framework not in (None, "onnx"):
            raise UsageError(f"--framework {framework} does not apply to --to onnx")
        fw, suffix = "onnxruntime", ".onnx"
    else:
        fw, suffix = _format(target, model, framework)
        _check_normalisation(target, meta)
    home = Path(run) if Path(run).is_dir() else Path(run).parent  # the run directory, not a checkpoint generation
    path = Path(output) if output else home / f"{_stem(target, meta)}{suffix}"
    if path.suffix != suffix:
        raise UsageError(f"{target} {fw} files end in {suffix}, not '{path.suffix or path.name}'",
                         hint=f"name the output ...{suffix}")
    if path.is_dir():
        raise UsageError(f"--output {path} is a directory", hint=f"name a file ...{suffix}")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists", hint="pass --overwrite or another --output")
    state = ck.state
    if target == "onnx":
        _write_onnx(path, ck)
    elif fw == "mlx":
        _write_npz(path, _mlx_names(target, model, _mlx_layout(_spec(meta), state)))
    elif fw == "torch":
        _write_pth(path, _torch_state(_spec(meta), state))
    else:
        _write_pkl(path, _definfo_simplecnn(state))
    return Exported(path, target, fw, model, meta["dataset"], len(state))


def _format(target: str, model: str, framework: str | None) -> tuple[str, str]:
    if (target, model) in WHY_NOT:
        raise UsageError(f"cannot export {model} to {target}: {WHY_NOT[target, model]}")
    formats = FORMATS[target].get(model)
    if formats is None:
        raise UsageError(f"{target} has no {model} model", hint=f"{target} exports: {', '.join(FORMATS[target])}; "
                         "any model exports --to onnx")
    if framework is None:
        return formats[0]
    for fw, suffix in formats:
        if fw == framework:
            return fw, suffix
    raise UsageError(f"{target}'s {model} was {' or '.join(f for f, _ in formats)}, not {framework}")


def _check_normalisation(target: str, meta: dict[str, Any]) -> None:
    mean, std = NORMALISATION[target]
    channels = int(meta.get("in_channels") or len(meta["mean"]))
    want_mean, want_std = np.array(mean * channels), np.array(std * channels)
    if np.allclose(meta["mean"], want_mean, rtol=0, atol=1e-7) and np.allclose(meta["std"], want_std, rtol=0, atol=1e-7):
        return
    flag = NORMALIZE_FLAG[(mean, std)]
    raise UsageError(
        f"{target}'s scripts scale inputs as mean {mean[0]:g} std {std[0]:g}; this run was trained with mean "
        f"{_fmt(meta['mean'])} std {_fmt(meta['std'])}",
        hint=f"train with --normalize {flag} to export to {target}, or export --to onnx (carries any normalisation)",
    )


def _fmt(values: Any) -> str:
    return "/".join(f"{float(v):.4g}" for v in values)


def _stem(target: str, meta: dict[str, Any]) -> str:
    dataset = str(meta["dataset"])
    if ":" in dataset:  # npz:PATH -> the file's stem
        dataset = Path(dataset.split(":", 1)[1]).stem or dataset.split(":", 1)[0]
    return f"{meta['model']}-{dataset}-{target}".replace(":", "-").replace("/", "_")


def _spec(meta: dict[str, Any]):
    from cifarbench.models import create_spec

    return create_spec(meta["model"], int(meta["in_channels"]), int(meta["image_size"]), int(meta["num_classes"]))


# ---------------------------------------------------------------- layouts and names

def _mlx_layout(spec, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical -> MLX: convs OHWI, and a Linear after a flatten reads its input in H, W, C order."""
    out = {k: (np.ascontiguousarray(v.transpose(0, 2, 3, 1)) if v.ndim == 4 else v) for k, v in state.items()}
    for name, (c, h, w) in flatten_inputs(spec).items():
        wt = out[f"{name}.weight"]
        out[f"{name}.weight"] = np.ascontiguousarray(wt.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(wt.shape[0], -1))
    return out


_MENZ_SKIP = re.compile(r"^skip([246])\.")
_MIKE_SKIP = {"skip2": "skip1", "skip4": "skip2", "skip6": "skip3"}


def _mlx_names(target: str, model: str, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ours -> the MLX module attribute paths each original's save_weights writes."""
    out = {}
    for key, value in state.items():
        if target == "menzhse":
            new = _MENZ_SKIP.sub(r"conv_skip\1.", key)  # menzHSE's MLX CNN: conv_skip2/4/6
        else:  # mike7seven's MLX ResNet-18 (nn.Sequential stages, "shortcut") and SmallCNN (skip1..3)
            new = re.sub(r"^(layer\d)\.(\d+)\.", r"\1.layers.\2.", key)
            new = re.sub(r"\.downsample\.(\d)\.", r".shortcut.layers.\1.", new)
            head, _, rest = new.partition(".")
            if head in _MIKE_SKIP:
                new = f"{_MIKE_SKIP[head]}.{rest}"
        out[new] = value
    return out


def _torch_state(spec, state: dict[str, np.ndarray]) -> "OrderedDict[str, Any]":
    """A torch ``state_dict`` in module order, with the BN batch counters torch's strict load expects."""
    import torch

    from cifarbench.models.spec import BatchNorm

    out: OrderedDict[str, Any] = OrderedDict()
    for layer in spec.param_layers():
        for key in [k for k in state if k.startswith(layer.name + ".") and k.count(".") == layer.name.count(".") + 1]:
            out[key] = torch.from_numpy(np.ascontiguousarray(state[key]))
        if isinstance(layer, BatchNorm):
            out[f"{layer.name}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    missing = set(state) - set(out)
    if missing:  # pragma: no cover - every canonical tensor belongs to a parameter layer
        raise CheckpointError(f"tensors outside the model's layers: {sorted(missing)[:3]}")
    return out


def _definfo_simplecnn(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """definfo's SimpleCNN attributes (its load_checkpoint sets each attribute the model has):
    convs OIHW, fully connected weights stored (in, out)."""
    d: dict[str, Any] = {"name": "SimpleCNN"}
    for conv in ("conv1", "conv2"):
        d[f"{conv}_w"], d[f"{conv}_b"] = state[f"{conv}.weight"], state[f"{conv}.bias"]
    for fc in ("fc1", "fc2", "fc3"):
        d[f"{fc}_w"], d[f"{fc}_b"] = np.ascontiguousarray(state[f"{fc}.weight"].T), state[f"{fc}.bias"]
    return {k: (np.asarray(v, np.float32) if isinstance(v, np.ndarray) else v) for k, v in d.items()}


# ---------------------------------------------------------------- writers (atomic)

def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic.write_with(path, lambda fh: np.savez(fh, **arrays))


def _write_pth(path: Path, state: "OrderedDict[str, Any]") -> None:
    import torch

    atomic.write_with(path, lambda fh: torch.save(state, fh))


def _write_pkl(path: Path, obj: dict[str, Any]) -> None:
    atomic.write_with(path, lambda fh: pickle.dump(obj, fh, protocol=4))


def _write_onnx(path: Path, ck) -> None:
    """The run's network in eval mode with its normalisation in front: float32 pixels in [0, 1]."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it; say so before tracing)
        import onnxscript  # noqa: F401
        import torch
    except ImportError as exc:
        raise UsageError(f"--to onnx needs {exc.name}", hint="pip install 'cifarbench[onnx]'") from None
    from cifarbench.backends.torch_backend.net import Dropper, SpecNet

    meta = ck.meta
    spec = _spec(meta)
    net = SpecNet(spec, Dropper(torch.device("cpu")))
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ck.state.items()}, strict=False)
    net.eval()

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(meta["mean"], dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(meta["std"], dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net((images - self.mean) / self.std)

    size, ch = int(meta["image_size"]), int(meta["in_channels"])
    example = torch.zeros(2, ch, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines stay off stdout (--json)
            torch.onnx.export(
                Normalised().eval(), (example,), str(tmp), dynamo=True, verbose=False, external_data=False,
                input_names=["images"], output_names=["logits"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            )
        atomic.write_with(path, lambda fh: fh.write(tmp.read_bytes()))
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)


def onnx_predict(path: str | Path, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits of an exported ONNX file on uint8 N x H x W x C images (onnxruntime, CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        out.append(session.run(None, {name: np.ascontiguousarray(x)})[0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
