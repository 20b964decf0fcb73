"""A model spec run functionally in MLX, channels-last.

Parameters live in a flat dict keyed by canonical names; conv weights are stored OHWI (MLX's
layout), which ``Backend`` converts to/from the canonical OIHW at the boundary
(``weight_layout``). Everything else (linear (out, in), BN vectors) keeps the canonical layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from cifarbench.models.spec import (
    AvgPool,
    BatchNorm,
    Conv,
    Dropout,
    GELU,
    Flatten,
    GlobalAvgPool,
    Group,
    Linear,
    MaxPool,
    ModelSpec,
    ReLU,
    Residual,
    Scale,
)


@dataclass
class Ctx:
    """What one pass needs besides the input: weights, mode, and what it records."""

    params: dict
    buffers: dict
    train: bool
    dropout: bool = True
    dtype: mx.Dtype = mx.float32  # compute dtype of conv/linear; BN and its stats stay float32
    capture: tuple[str, ...] = ()
    new_buffers: dict = field(default_factory=dict)
    captured: dict = field(default_factory=dict)


def run_layers(layers, x: mx.array, ctx: Ctx) -> mx.array:
    for layer in layers:
        x = run_layer(layer, x, ctx)
    return x


def tensor(ctx: Ctx, key: str) -> mx.array:
    """A weight by canonical name: trainable ones are in params, frozen ones among the buffers."""
    return ctx.params[key] if key in ctx.params else ctx.buffers[key]


def run_layer(layer, x: mx.array, ctx: Ctx) -> mx.array:
    if isinstance(layer, Conv):
        y = mx.conv2d(x, tensor(ctx, f"{layer.name}.weight").astype(ctx.dtype), stride=layer.stride, padding=layer.pad)
        return y + ctx.params[f"{layer.name}.bias"].astype(ctx.dtype) if layer.bias else y
    if isinstance(layer, BatchNorm):
        return batch_norm(layer, x, ctx)
    if isinstance(layer, Linear):
        y = x @ ctx.params[f"{layer.name}.weight"].astype(ctx.dtype).T
        return y + ctx.params[f"{layer.name}.bias"].astype(ctx.dtype) if layer.bias else y
    if isinstance(layer, ReLU):
        return mx.maximum(x, 0) if layer.slope == 0 else mx.where(x > 0, x, x * layer.slope)
    if isinstance(layer, GELU):
        return x * (0.5 * (1.0 + mx.erf(x * (2.0**-0.5))))
    if isinstance(layer, Scale):
        return x * layer.factor
    if isinstance(layer, (MaxPool, AvgPool)):
        return pool(x, layer.k, layer.stride, isinstance(layer, MaxPool))
    if isinstance(layer, GlobalAvgPool):
        return x.mean(axis=(1, 2))
    if isinstance(layer, Flatten):
        # Canonical C, H, W order keeps the next linear layer's weights portable.
        return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    if isinstance(layer, Dropout):
        if not (ctx.train and ctx.dropout) or layer.p == 0:
            return x
        keep = mx.random.bernoulli(1.0 - layer.p, x.shape)
        return x * keep.astype(x.dtype) * (1.0 / (1.0 - layer.p))
    if isinstance(layer, Group):
        return record(layer.name, run_layers(layer.layers, x, ctx), ctx)
    if isinstance(layer, Residual):
        skip = run_layers(layer.shortcut, x, ctx) if layer.shortcut else x
        y = run_layers(layer.body, x, ctx) + skip
        return record(layer.name, mx.maximum(y, 0) if layer.relu_after else y, ctx)
    raise TypeError(f"MLX backend: unsupported layer {type(layer).__name__}")


def record(name: str, x: mx.array, ctx: Ctx) -> mx.array:
    if name in ctx.capture:
        ctx.captured[name] = x
    return x


def batch_norm(layer: BatchNorm, x: mx.array, ctx: Ctx) -> mx.array:
    """PyTorch BN: batch stats in train (running_var gets the unbiased variance), running stats in eval."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(mx.float32)
    rm, rv = ctx.buffers[f"{layer.name}.running_mean"], ctx.buffers[f"{layer.name}.running_var"]
    if ctx.train:
        mean = x32.mean(axis=axes)
        var = x32.var(axis=axes)
        n = x32.size // x32.shape[-1]
        m = layer.momentum
        unbiased = var * (n / max(n - 1, 1))
        ctx.new_buffers[f"{layer.name}.running_mean"] = mx.stop_gradient((1 - m) * rm + m * mean)
        ctx.new_buffers[f"{layer.name}.running_var"] = mx.stop_gradient((1 - m) * rv + m * unbiased)
    else:
        mean, var = rm, rv
    scale = tensor(ctx, f"{layer.name}.weight") * mx.rsqrt(var + layer.eps)
    y = (x32 - mean) * scale + ctx.params[f"{layer.name}.bias"]
    return y.astype(x.dtype)


def pool(x: mx.array, k: int, stride: int, is_max: bool) -> mx.array:
    """k x k pooling on NHWC, floor mode (PyTorch's default)."""
    n, h, w, c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    if k == stride:
        # Non-overlapping windows: a reshape, cheaper than strided views.
        x = x[:, : ho * k, : wo * k, :].reshape(n, ho, k, wo, k, c)
        return x.max(axis=(2, 4)) if is_max else x.mean(axis=(2, 4))
    strides = [h * w * c, stride * w * c, stride * c, w * c, c, 1]
    windows = mx.as_strided(x, (n, ho, wo, k, k, c), strides)
    return windows.max(axis=(3, 4)) if is_max else windows.mean(axis=(3, 4))


def cross_entropy(logits: mx.array, y: mx.array, eps: float) -> mx.array:
    """Per-sample loss, PyTorch semantics: (1 - eps) * nll + eps * mean_c(-log p_c)."""
    logp = logits - mx.logsumexp(logits, axis=1, keepdims=True)
    nll = -mx.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    if eps == 0:
        return nll
    return (1 - eps) * nll - eps * logp.mean(axis=1)
