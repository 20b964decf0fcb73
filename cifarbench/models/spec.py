"""Architectures as data.

A model is a tree of small frozen dataclasses. Every backend walks the same tree with its own
primitives, so there is one definition of each model (DESIGN.md, principle 1).

Conventions every backend follows:
- parameter names are given in full on each layer (``layer2.0.conv1``), and a layer owns the
  tensors ``<name>.weight`` / ``<name>.bias`` (BN also ``running_mean`` / ``running_var``);
- canonical layouts are PyTorch's: conv weight OIHW, linear weight (out, in);
- ``Flatten`` flattens in C, H, W order (a channels-last backend transposes to NCHW first),
  so linear weights after a flatten are portable between backends;
- ``Group`` and ``Residual`` names are capture points: ``forward(x, capture=...)`` can return
  their outputs (used by ``cifarbench activations``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union


@dataclass(frozen=True)
class Conv:
    name: str
    cin: int
    cout: int
    k: int
    stride: int = 1
    pad: int = 0
    bias: bool = True
    # False: the weight is kept out of the optimizer (a buffer under its canonical name);
    # the bias, if any, still trains.
    trainable_weight: bool = True
    # "default": PyTorch's init; "dirac": the first ``cin`` filters start as the identity;
    # "whiten": set from the training data by cifarbench.engine.whiten (a patch-whitening layer).
    init: str = "default"


@dataclass(frozen=True)
class BatchNorm:
    name: str
    ch: int
    eps: float = 1e-5
    momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
    trainable_weight: bool = True  # False: the scale stays at its initial 1 (a buffer, name kept)


@dataclass(frozen=True)
class Linear:
    name: str
    fin: int
    fout: int
    bias: bool = True


@dataclass(frozen=True)
class ReLU:
    slope: float = 0.0  # > 0 means leaky ReLU


@dataclass(frozen=True)
class GELU:
    """x * Phi(x) with the exact normal CDF (erf form), as torch.nn.GELU() by default."""


@dataclass(frozen=True)
class Scale:
    """y = factor * x (e.g. a fixed temperature on the logits)."""

    factor: float


@dataclass(frozen=True)
class MaxPool:
    k: int = 2
    stride: int = 2
    pad: int = 0  # implicit -inf padding on each side (torch's MaxPool2d padding; the ImageNet stem's 1)


@dataclass(frozen=True)
class AvgPool:
    k: int = 2
    stride: int = 2


@dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over H and W: (N, C, H, W) -> (N, C)."""


@dataclass(frozen=True)
class Flatten:
    """(N, C, H, W) -> (N, C*H*W) in C, H, W order."""


@dataclass(frozen=True)
class Dropout:
    p: float


@dataclass(frozen=True)
class Group:
    """A named sequence; its output is a capture point."""

    name: str
    layers: tuple["Layer", ...]


@dataclass(frozen=True)
class Residual:
    """out = body(x) + shortcut(x) (identity when shortcut is empty), then ReLU if relu_after."""

    name: str
    body: tuple["Layer", ...]
    shortcut: tuple["Layer", ...] = ()
    relu_after: bool = True


Layer = Union[
    Conv, BatchNorm, Linear, ReLU, GELU, Scale, MaxPool, AvgPool, GlobalAvgPool, Flatten, Dropout, Group, Residual
]
PARAM_LAYERS = (Conv, BatchNorm, Linear)
# Tensors torch keeps that the canonical format does not (BN batch counters matter only when momentum=None).
NOT_CANONICAL_SUFFIXES = (".num_batches_tracked",)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[Layer, ...]
    in_channels: int
    image_size: int
    num_classes: int
    capture_points: tuple[str, ...] = field(default=())  # the four depths `activations` shows

    def param_layers(self) -> Iterator[Union[Conv, BatchNorm, Linear]]:
        yield from iter_param_layers(self.layers)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Trainable tensors in canonical order and layout (what the optimizer updates)."""
        frozen = self.frozen_names()
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.param_layers():
            shapes.update({k: v for k, v in layer_param_shapes(layer).items() if k not in frozen})
        return shapes

    def frozen_names(self) -> set[str]:
        """Weights of layers with ``trainable_weight=False``: kept as buffers under their usual names."""
        return {f"{l.name}.weight" for l in self.param_layers() if not getattr(l, "trainable_weight", True)}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Non-trainable state: frozen weights, then BN running statistics."""
        frozen = self.frozen_names()
        out = {k: v for l in self.param_layers() for k, v in layer_param_shapes(l).items() if k in frozen}
        out.update({
            f"{bn.name}.{buf}": (bn.ch,)
            for bn in self.param_layers()
            if isinstance(bn, BatchNorm)
            for buf in ("running_mean", "running_var")
        })
        return out

    def num_params(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total



@dataclass(frozen=True)
class ModuleSpec(ModelSpec):
    """A model that a namespace's own library builds (``tv:NAME``): names, shapes and capture
    points, no layers of ours. ``requires`` (on its registry namespace) names the one backend that
    can run it; that backend calls ``build_module`` and ``forward_capturing`` instead of walking
    layers, and nothing else needs to know which library it is.

    ``params``/``buffers`` are the module's own state_dict names and shapes; ``points`` every
    capture point ``forward_capturing`` accepts.
    """

    params: tuple[tuple[str, tuple[int, ...]], ...] = ()
    buffers: tuple[tuple[str, tuple[int, ...]], ...] = ()
    points: tuple[str, ...] = ()

    def param_layers(self) -> Iterator[Union[Conv, BatchNorm, Linear]]:
        return iter(())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.params)

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.buffers)

    def build_module(self):  # the library's module, freshly initialised
        raise NotImplementedError

    def forward_capturing(self, net, x, names, store: dict | None):  # net(x), outputs of ``names`` into store
        raise NotImplementedError


def iter_layers(layers: tuple[Layer, ...]) -> Iterator[Layer]:
    """Every layer of a tree, depth first, containers included."""
    for layer in layers:
        yield layer
        if isinstance(layer, Group):
            yield from iter_layers(layer.layers)
        elif isinstance(layer, Residual):
            yield from iter_layers(layer.body)
            yield from iter_layers(layer.shortcut)


def dropout_rates(spec: ModelSpec) -> list[float]:
    """The drop probability of every Dropout layer, depth first (empty: the model has none)."""
    return [l.p for l in iter_layers(spec.layers) if isinstance(l, Dropout)]


def with_dropout(spec: ModelSpec, rate: float) -> ModelSpec:
    """The same model with every Dropout layer dropping with probability ``rate``."""
    from dataclasses import replace

    def walk(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
        out = []
        for l in layers:
            if isinstance(l, Dropout):
                l = replace(l, p=rate)
            elif isinstance(l, Group):
                l = replace(l, layers=walk(l.layers))
            elif isinstance(l, Residual):
                l = replace(l, body=walk(l.body), shortcut=walk(l.shortcut))
            out.append(l)
        return tuple(out)

    return spec if isinstance(spec, ModuleSpec) else replace(spec, layers=walk(spec.layers))


def iter_param_layers(layers: tuple[Layer, ...]) -> Iterator[Union[Conv, BatchNorm, Linear]]:
    for layer in iter_layers(layers):
        if isinstance(layer, PARAM_LAYERS):
            yield layer


def layer_param_shapes(layer: Union[Conv, BatchNorm, Linear]) -> dict[str, tuple[int, ...]]:
    if isinstance(layer, Conv):
        out = {f"{layer.name}.weight": (layer.cout, layer.cin, layer.k, layer.k)}
        if layer.bias:
            out[f"{layer.name}.bias"] = (layer.cout,)
        return out
    if isinstance(layer, BatchNorm):
        return {f"{layer.name}.weight": (layer.ch,), f"{layer.name}.bias": (layer.ch,)}
    out = {f"{layer.name}.weight": (layer.fout, layer.fin)}
    if layer.bias:
        out[f"{layer.name}.bias"] = (layer.fout,)
    return out
