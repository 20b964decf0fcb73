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
    Linear,
    MaxPool,
    ReLU,
    Scale,
)
from cifarbench.models import walk


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

    def record(self, name: str, x: mx.array) -> mx.array:
        if name in self.capture:
            self.captured[name] = x
        return x


def tensor(ctx: Ctx, key: str) -> mx.array:
    """A weight by canonical name: trainable ones are in params, frozen ones among the buffers."""
    return ctx.params[key] if key in ctx.params else ctx.buffers[key]


def _conv(layer: Conv, x: mx.array, ctx: Ctx) -> mx.array:
    y = mx.conv2d(x, tensor(ctx, f"{layer.name}.weight").astype(ctx.dtype), stride=layer.stride, padding=layer.pad)
    return y + ctx.params[f"{layer.name}.bias"].astype(ctx.dtype) if layer.bias else y


def _linear(layer: Linear, x: mx.array, ctx: Ctx) -> mx.array:
    y = x @ ctx.params[f"{layer.name}.weight"].astype(ctx.dtype).T
    return y + ctx.params[f"{layer.name}.bias"].astype(ctx.dtype) if layer.bias else y


def _dropout(layer: Dropout, x: mx.array, ctx: Ctx) -> mx.array:
    if not (ctx.train and ctx.dropout) or layer.p == 0:
        return x
    keep = mx.random.bernoulli(1.0 - layer.p, x.shape)
    return x * keep.astype(x.dtype) * (1.0 / (1.0 - layer.p))


# The leaf layers; models.walk wires Group/Residual and records capture points (Ctx.record).
OPS = {
    Conv: _conv,
    BatchNorm: lambda layer, x, ctx: batch_norm(layer, x, ctx),
    Linear: _linear,
    ReLU: lambda layer, x, ctx: mx.maximum(x, 0) if layer.slope == 0 else mx.where(x > 0, x, x * layer.slope),
    GELU: lambda layer, x, ctx: x * (0.5 * (1.0 + mx.erf(x * (2.0**-0.5)))),
    Scale: lambda layer, x, ctx: x * layer.factor,
    MaxPool: lambda layer, x, ctx: pool(x, layer.k, layer.stride, True, layer.pad),
    AvgPool: lambda layer, x, ctx: pool(x, layer.k, layer.stride, False),
    GlobalAvgPool: lambda layer, x, ctx: x.mean(axis=(1, 2)),
    # Canonical C, H, W order keeps the next linear layer's weights portable.
    Flatten: lambda layer, x, ctx: x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1),
    Dropout: _dropout,
}


def run_layers(layers, x: mx.array, ctx: Ctx) -> mx.array:
    return walk.run_layers(layers, x, OPS, ctx)


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


def pool(x: mx.array, k: int, stride: int, is_max: bool, pad: int = 0) -> mx.array:
    """k x k pooling on NHWC, floor mode (PyTorch's default); max pooling pads with -inf (PyTorch's padding)."""
    if pad:
        x = mx.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)], constant_values=float("-inf"))
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
