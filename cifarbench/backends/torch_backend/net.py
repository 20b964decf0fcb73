"""ModelSpec -> torch.nn.Module.

Parameters live in ordinary nn.Conv2d / nn.BatchNorm2d / nn.Linear modules registered at
their canonical dotted paths (``layer2.0.conv1`` becomes the child chain layer2 -> 0 -> conv1),
so ``named_parameters()`` yields canonical names without any renaming table. The forward pass
is ``models/walk.py``'s spec walker (the plan kept plain and unregistered) with this module's op
table for the leaf layers, so residual wiring and capture points are written once for every backend.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifarbench.models.spec import (
    AvgPool,
    BatchNorm,
    Conv,
    Dropout,
    GELU,
    Flatten,
    GlobalAvgPool,
    NOT_CANONICAL_SUFFIXES,
    Linear,
    MaxPool,
    ModelSpec,
    ReLU,
    Scale,
    iter_param_layers,
)
from cifarbench.models.walk import run_layers


def _make_module(layer: Conv | BatchNorm | Linear) -> nn.Module:
    if isinstance(layer, Conv):
        module = nn.Conv2d(layer.cin, layer.cout, layer.k, stride=layer.stride, padding=layer.pad, bias=layer.bias)
    elif isinstance(layer, BatchNorm):
        module = nn.BatchNorm2d(layer.ch, eps=layer.eps, momentum=layer.momentum)
    else:
        return nn.Linear(layer.fin, layer.fout, bias=layer.bias)
    if not layer.trainable_weight:  # a frozen weight: no gradient, and outside the optimizer
        module.weight.requires_grad_(False)
    return module


def _register_at(root: nn.Module, dotted: str, module: nn.Module) -> None:
    """Attach ``module`` at ``root.<dotted>``, creating empty container modules on the way."""
    *parents, leaf = dotted.split(".")
    node = root
    for part in parents:
        child = node._modules.get(part)
        if child is None:
            child = nn.Module()
            node.add_module(part, child)
        node = child
    if leaf in node._modules:
        raise ValueError(f"model spec names layer {dotted!r} twice")
    node.add_module(leaf, module)


class Dropper:
    """Inverted dropout whose mask comes from an explicit generator (F.dropout takes none).

    Owning the generator is what makes a CPU run repeatable bit for bit given (seed, epoch).
    Under torch.compile a Generator argument breaks the graph (and the per-layer resumes then
    hit the recompile limit), so compiled runs use F.dropout and reseed torch's global RNG
    instead: still repeatable given (seed, epoch), but a different mask stream than eager.
    """

    def __init__(self, device: torch.device, use_global_rng: bool = False):
        self.generator = torch.Generator(device=device)
        self.use_global_rng = use_global_rng
        self.enabled = True

    def seed(self, seed: int) -> None:
        seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
        self.generator.manual_seed(seed)
        if self.use_global_rng:
            torch.manual_seed(seed)

    def __call__(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if p <= 0.0:
            return x
        if self.use_global_rng:
            return F.dropout(x, p, training=True)
        if p >= 1.0:
            return torch.zeros_like(x)
        keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=self.generator)
        return x * keep * (1.0 / (1.0 - p))


class SpecNet(nn.Module):
    """Runs a ModelSpec; ``capture`` (a dict given to forward) receives Group/Residual outputs."""

    def __init__(self, spec: ModelSpec, dropper: Dropper):
        super().__init__()
        for layer in iter_param_layers(spec.layers):
            _register_at(self, layer.name, _make_module(layer))
        self._spec_layers = spec.layers
        self._dropper = dropper
        self._leaf = {layer.name: self.get_submodule(layer.name) for layer in iter_param_layers(spec.layers)}

    def forward(self, x: torch.Tensor, capture: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return run_layers(self._spec_layers, x, OPS, _Ctx(self, capture))


class _Ctx:
    """What the op table needs besides the layer: the module (leaves, dropout) and the capture dict."""

    __slots__ = ("net", "capture")

    def __init__(self, net: SpecNet, capture: dict | None):
        self.net, self.capture = net, capture

    def record(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.capture is not None:
            self.capture[name] = x
        return x


def _leaf(layer: Conv | BatchNorm | Linear, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    return ctx.net._leaf[layer.name](x)


def _relu(layer: ReLU, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    return F.leaky_relu(x, layer.slope) if layer.slope > 0 else F.relu(x)


def _dropout(layer: Dropout, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    net = ctx.net
    if not (net.training and net._dropper.enabled):
        return x
    return net._dropper(x, layer.p)


# the leaf layers; Group/Residual wiring and capture points are models/walk.py's
OPS: dict[type, Callable[[object, torch.Tensor, _Ctx], torch.Tensor]] = {
    Conv: _leaf,
    BatchNorm: _leaf,
    Linear: _leaf,
    ReLU: _relu,
    GELU: lambda layer, x, ctx: F.gelu(x),
    Scale: lambda layer, x, ctx: x * layer.factor,
    MaxPool: lambda layer, x, ctx: F.max_pool2d(x, layer.k, layer.stride, layer.pad),
    AvgPool: lambda layer, x, ctx: F.avg_pool2d(x, layer.k, layer.stride),
    GlobalAvgPool: lambda layer, x, ctx: x.mean(dim=(2, 3)),
    # reshape follows the logical N, C, H, W order even for channels_last storage
    Flatten: lambda layer, x, ctx: x.flatten(1),
    Dropout: _dropout,
}


def canonical_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical name -> the live parameter/buffer tensor (BN batch counters left out)."""
    out: dict[str, torch.Tensor] = dict(net.named_parameters())
    for name, buf in net.named_buffers():
        if not name.endswith(NOT_CANONICAL_SUFFIXES):
            out[name] = buf
    return out
