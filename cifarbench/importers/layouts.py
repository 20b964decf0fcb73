"""Name and layout maps from each original project's checkpoint to canonical tensors.

Every function takes the raw contents read by ``readers`` and returns canonical names in
PyTorch layout (conv OIHW, linear (out, in)). Facts used (read from the originals' code):

- MLX stores conv weights OHWI, flattens NHWC feature maps in H, W, C order, and saves BN
  running statistics next to weight/bias; ``nn.Sequential`` children are ``<name>.layers.<i>``.
- menzHSE: conv1..conv6, bn1..bn6, fc1, fc2; the 1x1 skips are ``conv_skip2/4/6`` in the MLX
  model (every version since 2023-12-24, ``save_weights`` to .npz or .safetensors) and
  ``skip2/4/6`` in the torch sibling. Both spellings are accepted; ours is ``skip2/4/6``.
- mike7seven MLX SmallCNN: the same but skip1/skip2/skip3; its ResNet-18 uses
  ``layerN.layers.B.{conv1,bn1,conv2,bn2}`` and ``...shortcut.layers.{0,1}`` for the projection.
- mike7seven torch: torchvision resnet18 names (ours), or the LeNets' conv1/conv2/fc1..fc3.
- definfo pickles: SimpleCNN ``model.__dict__`` with conv{1,2}_{w,b} (OIHW) and fc{1,2,3}_{w,b}
  with w stored (in, out); ResNet32 top-level init_conv_*, init_bn_{gamma,beta} (1,C,1,1), fc_w
  (in, out), fc_b, and ``blocks_data`` (15 dicts: conv1_w, bn1_gamma, ..., shortcut_w,
  shortcut_bn_gamma, ...). definfo's BN keeps no running statistics.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from cifarbench.errors import CheckpointError
from cifarbench.models.shapes import layer_shape
from cifarbench.models.spec import NOT_CANONICAL_SUFFIXES as TORCH_ONLY_BUFFERS
from cifarbench.models.spec import BatchNorm, Flatten, Group, Layer, Linear, ModelSpec


# ---------------------------------------------------------------- generic helpers

def f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def mlx_to_torch_layout(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OHWI conv weights -> OIHW; everything else is already in torch layout."""
    return {k: (f32(v).transpose(0, 3, 1, 2) if v.ndim == 4 else f32(v)) for k, v in state.items()}


def flatten_inputs(spec: ModelSpec) -> dict[str, tuple[int, int, int]]:
    """Linear layers fed by a Flatten -> the (C, H, W) map flattened into them."""
    found: dict[str, tuple[int, int, int]] = {}

    def visit(layers: tuple[Layer, ...], shape: tuple[int, ...], pending: tuple[int, ...] | None) -> tuple[int, ...]:
        for layer in layers:
            if isinstance(layer, Linear) and pending is not None:
                found[layer.name] = pending  # type: ignore[assignment]
            if isinstance(layer, Flatten):
                pending = shape
            elif isinstance(layer, Linear):
                pending = None
            if isinstance(layer, Group):
                shape = visit(layer.layers, shape, None)
            else:
                shape = layer_shape(layer, shape)
        return shape

    visit(spec.layers, (spec.in_channels, spec.image_size, spec.image_size), None)
    return found


def hwc_to_chw_columns(spec: ModelSpec, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reorder the input columns of linears after a Flatten from NHWC order to our C, H, W order."""
    out = dict(state)
    for name, (c, h, w) in flatten_inputs(spec).items():
        key = f"{name}.weight"
        if key in out and out[key].shape[1] == c * h * w:
            wt = out[key]
            out[key] = np.ascontiguousarray(wt.reshape(wt.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(wt.shape[0], -1))
    return out


def add_identity_bn_stats(spec: ModelSpec, state: dict[str, np.ndarray]) -> list[str]:
    """Fill missing BN running statistics with mean 0 / var 1; returns the layers filled."""
    filled = []
    for layer in spec.param_layers():
        if isinstance(layer, BatchNorm) and f"{layer.name}.running_mean" not in state:
            state[f"{layer.name}.running_mean"] = np.zeros(layer.ch, np.float32)
            state[f"{layer.name}.running_var"] = np.ones(layer.ch, np.float32)
            filled.append(layer.name)
    return filled


def drop_torch_buffers(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: f32(v) for k, v in state.items() if not k.endswith(TORCH_ONLY_BUFFERS)}


def unwrap_state_dict(obj: dict[str, Any]) -> dict[str, np.ndarray]:
    """A plain state dict, or one nested under the usual keys (model/state_dict/net)."""
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    arrays = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise CheckpointError("the file holds no tensors")
    # DataParallel / torch.compile prefixes
    return {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in arrays.items()}


# ---------------------------------------------------------------- MLX renames

_MENZ_MLX_SKIP = re.compile(r"^conv_skip([246])\.")


def rename_menzhse(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """menzHSE's MLX skip names (conv_skip2/4/6) -> ours (skip2/4/6); the torch names pass through."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        new = _MENZ_MLX_SKIP.sub(r"skip\1.", key)
        if new in out:
            raise CheckpointError(f"the checkpoint holds both {new} and conv_{new} (one skip, two names)")
        out[new] = value
    return out


_SKIP_RENAME = {"skip1": "skip2", "skip2": "skip4", "skip3": "skip6"}


def rename_mike7seven_mlx(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mike7seven's MLX names -> ours (torchvision-style ResNet names; menzHSE skip numbering)."""
    out = {}
    for key, value in state.items():
        new = re.sub(r"^(layer\d)\.layers\.(\d+)\.", r"\1.\2.", key)
        new = re.sub(r"\.shortcut\.layers\.(\d)\.", r".downsample.\1.", new)
        head, _, rest = new.partition(".")
        if head in _SKIP_RENAME and "layer" not in key:
            new = f"{_SKIP_RENAME[head]}.{rest}"
        out[new] = value
    return out


# ---------------------------------------------------------------- definfo pickles

def _state_of(obj: Any) -> dict[str, Any]:
    """definfo pickles hold dicts; a pickled object (placeholder) carries its __dict__ as state."""
    if isinstance(obj, dict):
        return obj
    state = getattr(obj, "state", None)
    if isinstance(state, dict):
        return state
    raise CheckpointError(f"expected a definfo checkpoint dict, found {type(obj).__name__}")


def _need(d: dict[str, Any], key: str, where: str) -> np.ndarray:
    if key not in d or not hasattr(d[key], "shape"):
        raise CheckpointError(f"definfo checkpoint has no array '{key}' in {where}")
    return f32(d[key])


def definfo_kind(obj: Any) -> str:
    d = _state_of(obj)
    if "blocks_data" in d:
        return "resnet32-definfo"
    if "conv1_w" in d and "fc3_w" in d:
        return "simplecnn"
    raise CheckpointError("not a definfo checkpoint: no 'blocks_data' (ResNet32) nor 'conv1_w'/'fc3_w' (SimpleCNN)")


def definfo_simplecnn(obj: Any) -> dict[str, np.ndarray]:
    d = _state_of(obj)
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        out[f"{conv}.weight"] = _need(d, f"{conv}_w", "the model")
        out[f"{conv}.bias"] = _need(d, f"{conv}_b", "the model")
    for fc in ("fc1", "fc2", "fc3"):
        out[f"{fc}.weight"] = f32(_need(d, f"{fc}_w", "the model").T)  # stored (in, out)
        out[f"{fc}.bias"] = _need(d, f"{fc}_b", "the model")
    return out


def _definfo_block(b: dict[str, Any], name: str, where: str) -> dict[str, np.ndarray]:
    out = {}
    for i in (1, 2):
        out[f"{name}.conv{i}.weight"] = _need(b, f"conv{i}_w", where)
        out[f"{name}.conv{i}.bias"] = _need(b, f"conv{i}_b", where)
        out[f"{name}.bn{i}.weight"] = _need(b, f"bn{i}_gamma", where).reshape(-1)
        out[f"{name}.bn{i}.bias"] = _need(b, f"bn{i}_beta", where).reshape(-1)
    if b.get("downsample") or "shortcut_w" in b:
        out[f"{name}.downsample.0.weight"] = _need(b, "shortcut_w", where)
        out[f"{name}.downsample.0.bias"] = _need(b, "shortcut_b", where)
        out[f"{name}.downsample.1.weight"] = _need(b, "shortcut_bn_gamma", where).reshape(-1)
        out[f"{name}.downsample.1.bias"] = _need(b, "shortcut_bn_beta", where).reshape(-1)
    return out


def definfo_resnet32(obj: Any, blocks_per_stage: int = 5) -> dict[str, np.ndarray]:
    d = _state_of(obj)
    out = {
        "conv1.weight": _need(d, "init_conv_w", "the model"),
        "conv1.bias": _need(d, "init_conv_b", "the model"),
        "bn1.weight": _need(d, "init_bn_gamma", "the model").reshape(-1),
        "bn1.bias": _need(d, "init_bn_beta", "the model").reshape(-1),
        "fc.weight": f32(_need(d, "fc_w", "the model").T),  # stored (in, out)
        "fc.bias": _need(d, "fc_b", "the model"),
    }
    blocks = d["blocks_data"]
    if not isinstance(blocks, (list, tuple)) or len(blocks) != 3 * blocks_per_stage:
        raise CheckpointError(f"definfo ResNet32 checkpoint should hold {3 * blocks_per_stage} blocks")
    for i, block in enumerate(blocks):
        name = f"layer{i // blocks_per_stage + 1}.{i % blocks_per_stage}"
        out.update(_definfo_block(_state_of(block), name, f"block {i}"))
    return out
