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
    Group,
    Layer,
    Linear,
    MaxPool,
    ModelSpec,
    ReLU,
    Residual,
    Scale,
)

Shape = tuple[int, ...]  # (C, H, W) for feature maps, (F,) after Flatten/GlobalAvgPool


class SpecShapeError(ValueError):
    """A spec whose layers do not fit together (a bug in a builder, not user input)."""


def _pool(size: int, k: int, stride: int) -> int:
    # floor mode, as torch.nn.MaxPool2d / mlx.nn.MaxPool2d default
    return (size - k) // stride + 1


def _need_map(layer: Layer, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise SpecShapeError(f"{type(layer).__name__} needs a (C, H, W) input, got {shape}")
    return shape  # type: ignore[return-value]


def layer_shape(layer: Layer, shape: Shape) -> Shape:
    """Output shape of one layer (per sample, batch axis left out)."""
    if isinstance(layer, Conv):
        c, h, w = _need_map(layer, shape)
        if c != layer.cin:
            raise SpecShapeError(f"{layer.name}: expects {layer.cin} input channels, got {c}")
        oh = (h + 2 * layer.pad - layer.k) // layer.stride + 1
        ow = (w + 2 * layer.pad - layer.k) // layer.stride + 1
        if oh < 1 or ow < 1:
            raise SpecShapeError(f"{layer.name}: input {h}x{w} is too small for a {layer.k}x{layer.k} kernel")
        return (layer.cout, oh, ow)
    if isinstance(layer, BatchNorm):
        c, _, _ = _need_map(layer, shape)
        if c != layer.ch:
            raise SpecShapeError(f"{layer.name}: expects {layer.ch} channels, got {c}")
        return shape
    if isinstance(layer, Linear):
        if len(shape) != 1 or shape[0] != layer.fin:
            raise SpecShapeError(f"{layer.name}: expects ({layer.fin},) input, got {shape}")
        return (layer.fout,)
    if isinstance(layer, (MaxPool, AvgPool)):
        c, h, w = _need_map(layer, shape)
        oh, ow = _pool(h, layer.k, layer.stride), _pool(w, layer.k, layer.stride)
        if oh < 1 or ow < 1:
            raise SpecShapeError(f"pooling {layer.k}x{layer.k} on a {h}x{w} map leaves nothing")
        return (c, oh, ow)
    if isinstance(layer, GlobalAvgPool):
        return (_need_map(layer, shape)[0],)
    if isinstance(layer, Flatten):
        c, h, w = _need_map(layer, shape)
        return (c * h * w,)
    if isinstance(layer, (ReLU, GELU, Scale, Dropout)):
        return shape
    if isinstance(layer, Group):
        return walk(layer.layers, shape)
    if isinstance(layer, Residual):
        body = walk(layer.body, shape)
        short = walk(layer.shortcut, shape) if layer.shortcut else shape
        if body != short:
            raise SpecShapeError(f"{layer.name}: body gives {body} but shortcut gives {short}")
        return body
    raise SpecShapeError(f"unknown layer type {type(layer).__name__}")


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


def capture_shapes(spec: ModelSpec) -> dict[str, Shape]:
    """Per-sample output shape of every Group/Residual (the capture points), by name."""
    found: dict[str, Shape] = {}

    def visit(layers: Sequence[Layer], shape: Shape) -> Shape:
        for layer in layers:
            if isinstance(layer, Group):
                out = visit(layer.layers, shape)
                found[layer.name] = out
            elif isinstance(layer, Residual):
                out = layer_shape(layer, shape)
                visit(layer.body, shape)
                found[layer.name] = out
            else:
                out = layer_shape(layer, shape)
            shape = out
        return shape

    visit(spec.layers, input_shape(spec))
    return found
