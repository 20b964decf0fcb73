"""Shape inference for model specs, in pure Python (no framework, no arrays).

Builders use it to size the linear layer after a ``Flatten`` from the image size (so one
builder serves 28 and 32 pixel inputs), and tests use it to check that every spec is well
formed: channel counts chain, residual branches agree, and the output is (N, classes).
"""

from __future__ import annotations

from typing import Sequence

from cifarbench.models.spec import (
    AvgPool,
    BatchNorm,
    Conv,
    Dropout,
    GELU,
    Flatten,
    GlobalAvgPool,
    Layer,
    Linear,
    MaxPool,
    ModelSpec,
    ReLU,
    Residual,
    Scale,
)
from cifarbench.models.walk import ADD, UnknownLayer, run_layer, run_layers

Shape = tuple[int, ...]  # (C, H, W) for feature maps, (F,) after Flatten/GlobalAvgPool


class SpecShapeError(ValueError):
    """A spec whose layers do not fit together (a bug in a builder, not user input)."""


def _pool(size: int, k: int, stride: int, pad: int = 0) -> int:
    # floor mode, as torch.nn.MaxPool2d / mlx.nn.MaxPool2d default
    return (size + 2 * pad - k) // stride + 1


def _need_map(layer: Layer, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise SpecShapeError(f"{type(layer).__name__} needs a (C, H, W) input, got {shape}")
    return shape  # type: ignore[return-value]


def _conv(layer: Conv, shape: Shape, _ctx) -> Shape:
    c, h, w = _need_map(layer, shape)
    if c != layer.cin:
        raise SpecShapeError(f"{layer.name}: expects {layer.cin} input channels, got {c}")
    oh = (h + 2 * layer.pad - layer.k) // layer.stride + 1
    ow = (w + 2 * layer.pad - layer.k) // layer.stride + 1
    if oh < 1 or ow < 1:
        raise SpecShapeError(f"{layer.name}: input {h}x{w} is too small for a {layer.k}x{layer.k} kernel")
    return (layer.cout, oh, ow)


def _batch_norm(layer: BatchNorm, shape: Shape, _ctx) -> Shape:
    c, _, _ = _need_map(layer, shape)
    if c != layer.ch:
        raise SpecShapeError(f"{layer.name}: expects {layer.ch} channels, got {c}")
    return shape


def _linear(layer: Linear, shape: Shape, _ctx) -> Shape:
    if len(shape) != 1 or shape[0] != layer.fin:
        raise SpecShapeError(f"{layer.name}: expects ({layer.fin},) input, got {shape}")
    return (layer.fout,)


def _pooling(layer: MaxPool | AvgPool, shape: Shape, _ctx) -> Shape:
    c, h, w = _need_map(layer, shape)
    pad = getattr(layer, "pad", 0)
    if 2 * pad > layer.k:  # torch's own rule: a window must never lie wholly in the padding
        raise SpecShapeError(f"pooling {layer.k}x{layer.k} cannot pad {pad} (at most half the kernel)")
    oh, ow = _pool(h, layer.k, layer.stride, pad), _pool(w, layer.k, layer.stride, pad)
    if oh < 1 or ow < 1:
        raise SpecShapeError(f"pooling {layer.k}x{layer.k} on a {h}x{w} map leaves nothing")
    return (c, oh, ow)


def _join(layer: Residual, body: Shape, short: Shape, _ctx) -> Shape:
    if body != short:
        raise SpecShapeError(f"{layer.name}: body gives {body} but shortcut gives {short}")
    return body


def _flatten(layer: Flatten, shape: Shape, _ctx) -> Shape:
    c, h, w = _need_map(layer, shape)
    return (c * h * w,)


_same = lambda layer, shape, _ctx: shape  # noqa: E731
# Shapes are one more "backend" of the spec walker (models.walk): an op table over per-sample shapes.
OPS = {
    Conv: _conv, BatchNorm: _batch_norm, Linear: _linear, MaxPool: _pooling, AvgPool: _pooling,
    GlobalAvgPool: lambda layer, shape, _ctx: (_need_map(layer, shape)[0],), Flatten: _flatten,
    ReLU: _same, GELU: _same, Scale: _same, Dropout: _same, ADD: _join,
}


def layer_shape(layer: Layer, shape: Shape) -> Shape:
    """Output shape of one layer (per sample, batch axis left out)."""
    try:
        return run_layer(layer, shape, OPS)
    except UnknownLayer as exc:
        raise SpecShapeError(f"unknown layer type {type(layer).__name__}") from exc


def walk(layers: Sequence[Layer], shape: Shape) -> Shape:
    for layer in layers:
        shape = layer_shape(layer, shape)
    return shape


def input_shape(spec: ModelSpec) -> Shape:
    return (spec.in_channels, spec.image_size, spec.image_size)


def output_shape(spec: ModelSpec, batch: int = 1) -> tuple[int, ...]:
    """(batch, classes) for a well-formed spec; raises SpecShapeError naming the misfit layer."""
    out = walk(spec.layers, input_shape(spec))
    return (batch, *out)


def flat_features(layers: Sequence[Layer], in_channels: int, image_size: int) -> int:
    """Number of features after flattening the output of ``layers`` (used to size the first FC)."""
    shape = walk(layers, (in_channels, image_size, image_size))
    n = 1
    for d in shape:
        n *= d
    return n


class _Recorder(dict):
    def record(self, name: str, shape: Shape) -> Shape:
        self[name] = shape
        return shape


def capture_shapes(spec: ModelSpec) -> dict[str, Shape]:
    """Per-sample output shape of every Group/Residual (the capture points), by name."""

    rec = _Recorder()
    run_layers(spec.layers, input_shape(spec), OPS, rec)
    return dict(rec)
