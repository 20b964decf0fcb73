"""A spec as pure JAX functions, channels-last (NHWC activations, OHWI conv weights).

The op table below is all the backend knows about layers; ``models.walk`` wires Groups,
Residuals and capture points. BN in train mode returns its new running statistics through the
context (PyTorch semantics: unbiased running variance), so the whole step stays a pure function
that ``jax.jit`` compiles once per batch shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from cifarbench.models import spec as S
from cifarbench.models.walk import run_layers

_CONV_DIMS = ("NHWC", "OHWI", "NHWC")


@dataclass
class Ctx:
    params: dict
    buffers: dict
    train: bool
    dropout: bool = True
    key: Any = None  # a jax.random key, split once per dropout layer
    capture: tuple[str, ...] = ()
    new_buffers: dict = field(default_factory=dict)
    captured: dict = field(default_factory=dict)

    def tensor(self, key: str):
        """Trainable weights are in params; frozen ones (``trainable_weight=False``) among the buffers."""
        return self.params[key] if key in self.params else self.buffers[key]

    def record(self, name: str, y):
        if name in self.capture:
            self.captured[name] = y
        return y


def _conv(layer: S.Conv, x, ctx: Ctx):
    pad = ((layer.pad, layer.pad), (layer.pad, layer.pad))
    y = jax.lax.conv_general_dilated(x, ctx.tensor(f"{layer.name}.weight"), (layer.stride, layer.stride), pad,
                                     dimension_numbers=_CONV_DIMS, precision=jax.lax.Precision.HIGHEST)
    return y + ctx.params[f"{layer.name}.bias"] if layer.bias else y


def _batch_norm(layer: S.BatchNorm, x, ctx: Ctx):
    n = layer.name
    axes = tuple(range(x.ndim - 1))
    if ctx.train:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        count = x.size // x.shape[-1]
        m = layer.momentum
        unbiased = var * (count / max(count - 1, 1))
        ctx.new_buffers[f"{n}.running_mean"] = jax.lax.stop_gradient((1 - m) * ctx.buffers[f"{n}.running_mean"] + m * mean)
        ctx.new_buffers[f"{n}.running_var"] = jax.lax.stop_gradient((1 - m) * ctx.buffers[f"{n}.running_var"] + m * unbiased)
    else:
        mean, var = ctx.buffers[f"{n}.running_mean"], ctx.buffers[f"{n}.running_var"]
    scale = ctx.tensor(f"{n}.weight") * jax.lax.rsqrt(var + layer.eps)
    return (x - mean) * scale + ctx.params[f"{n}.bias"]


def _linear(layer: S.Linear, x, ctx: Ctx):
    y = jnp.matmul(x, ctx.params[f"{layer.name}.weight"].T, precision=jax.lax.Precision.HIGHEST)
    return y + ctx.params[f"{layer.name}.bias"] if layer.bias else y


def _pool(layer, x, ctx: Ctx):
    dims, strides = (1, layer.k, layer.k, 1), (1, layer.stride, layer.stride, 1)
    if isinstance(layer, S.MaxPool):
        p = layer.pad  # -inf padding on H and W, as torch's MaxPool2d
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, ((0, 0), (p, p), (p, p), (0, 0)))
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID") / (layer.k * layer.k)


def _dropout(layer: S.Dropout, x, ctx: Ctx):
    if not (ctx.train and ctx.dropout) or layer.p == 0:
        return x
    ctx.key, sub = jax.random.split(ctx.key)
    keep = jax.random.bernoulli(sub, 1.0 - layer.p, x.shape)
    return jnp.where(keep, x / (1.0 - layer.p), 0.0)


OPS = {
    S.Conv: _conv,
    S.BatchNorm: _batch_norm,
    S.Linear: _linear,
    S.ReLU: lambda l, x, ctx: jnp.maximum(x, 0) if l.slope == 0 else jnp.where(x > 0, x, x * l.slope),
    S.GELU: lambda l, x, ctx: jax.nn.gelu(x, approximate=False),
    S.Scale: lambda l, x, ctx: x * l.factor,
    S.MaxPool: _pool,
    S.AvgPool: _pool,
    S.GlobalAvgPool: lambda l, x, ctx: x.mean(axis=(1, 2)),
    # canonical C, H, W order keeps the next linear layer's weights portable
    S.Flatten: lambda l, x, ctx: x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1),
    S.Dropout: _dropout,
}


def forward(spec: S.ModelSpec, ctx: Ctx, x):
    return run_layers(spec.layers, x, OPS, ctx)


def cross_entropy(logits, y, eps: float):
    """Per-sample loss, PyTorch semantics: (1 - eps) * nll + eps * mean_c(-log p_c)."""
    logp = jax.nn.log_softmax(logits, axis=1)
    nll = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    return nll if eps == 0 else (1 - eps) * nll - eps * logp.mean(axis=1)


def augment(padded, idx, offsets, flips, pad: int, h: int, w: int):
    """uint8 (B, H, W, C) from the once-padded split: one gather does crop and mirror (the contract's order)."""
    rows, cols = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    dy = offsets[:, 0:1] if offsets is not None else jnp.full((idx.shape[0], 1), pad)
    dx = offsets[:, 1:2] if offsets is not None else jnp.full((idx.shape[0], 1), pad)
    if flips is not None:
        cols = jnp.where(flips[:, None], (w - 1) - cols, cols)
    return padded[idx[:, None, None], (dy + rows)[:, :, None], (dx + cols)[:, None, :]]
