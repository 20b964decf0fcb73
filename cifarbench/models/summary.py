"""What a model costs, from its spec alone: per-layer output shape, parameters and MACs.

Pure Python over the spec tree (no framework, no arrays), so ``cifarbench models --summary``
works without torch or MLX installed.

Convention (the one fvcore, ptflops and thop use for the figures usually quoted, e.g. 0.56 G
for ResNet-18 on CIFAR-10): MACs are the multiply-accumulates of conv and linear weights,
per image, forward only. A conv costs ``cout * oh * ow * cin * k * k``, a linear ``fin * fout``;
biases, BatchNorm, activations, pooling and residual additions are not counted (together well
under 1% for these models). One MAC is two FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cifarbench.models.shapes import Shape, input_shape, layer_shape
from cifarbench.models.spec import (
    GELU,
    AvgPool,
    BatchNorm,
    Conv,
    Dropout,
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
    layer_param_shapes,
)

# One training step costs about 3x the forward pass (forward, then backward: gradients with
# respect to inputs and to weights, each about one forward), and one MAC is 2 FLOPs.
TRAIN_PASSES = 3
FLOPS_PER_MAC = 2


@dataclass(frozen=True)
class Row:
    depth: int  # nesting level (0 = top)
    kind: str  # Conv2d, BatchNorm2d, Linear, ReLU, Group, Residual, ...
    name: str  # canonical name for named layers, "" otherwise
    shape: Shape  # per-image output shape
    params: int  # trainable parameters (a container: of everything inside it)
    macs: int  # forward MACs per image (a container: of everything inside it)
    container: bool = False


@dataclass(frozen=True)
class Summary:
    model: str
    input_shape: Shape
    rows: tuple[Row, ...]
    params: int
    macs: int

    @property
    def train_flops_per_image(self) -> int:
        return TRAIN_PASSES * FLOPS_PER_MAC * self.macs

    def as_dict(self) -> dict:
        return {
            "model": self.model, "input_shape": list(self.input_shape), "params": self.params,
            "forward_macs": self.macs, "train_flops_per_image": self.train_flops_per_image,
            "convention": CONVENTION,
            "layers": [
                {"depth": r.depth, "kind": r.kind, "name": r.name, "output_shape": list(r.shape),
                 "params": r.params, "macs": r.macs, "container": r.container}
                for r in self.rows
            ],
        }


CONVENTION = (
    "MACs: conv and linear weight multiply-accumulates per image, forward; bias, BN, activations, pooling and "
    "additions not counted; train FLOPs per image = 3 passes x 2 FLOPs per MAC x forward MACs"
)

_KIND = {
    Conv: "Conv2d", BatchNorm: "BatchNorm2d", Linear: "Linear", ReLU: "ReLU", GELU: "GELU", Scale: "Scale",
    MaxPool: "MaxPool2d", AvgPool: "AvgPool2d", GlobalAvgPool: "GlobalAvgPool", Flatten: "Flatten",
    Dropout: "Dropout", Group: "Group", Residual: "Residual",
}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _leaf_cost(layer: Layer, out: Shape, frozen: set[str]) -> tuple[int, int]:
    """(trainable params, forward MACs) of one non-container layer with output shape ``out``."""
    if not isinstance(layer, (Conv, BatchNorm, Linear)):
        return 0, 0
    params = sum(_numel(s) for k, s in layer_param_shapes(layer).items() if k not in frozen)
    if isinstance(layer, Conv):
        return params, _numel(out) * layer.cin * layer.k * layer.k
    if isinstance(layer, Linear):
        return params, layer.fin * layer.fout
    return params, 0


def summarize(spec: ModelSpec) -> Summary:
    frozen = spec.frozen_names()
    rows: list[Row] = []

    def visit(layers: tuple[Layer, ...], shape: Shape, depth: int) -> tuple[Shape, int, int]:
        total_p = total_m = 0
        for layer in layers:
            if isinstance(layer, (Group, Residual)):
                at = len(rows)
                rows.append(Row(depth, _KIND[type(layer)], layer.name, (), 0, 0, True))  # filled in below
                if isinstance(layer, Group):
                    out, p, m = visit(layer.layers, shape, depth + 1)
                else:
                    out, p, m = visit(layer.body, shape, depth + 1)
                    _, ps, ms = visit(layer.shortcut, shape, depth + 1)
                    p, m = p + ps, m + ms
                    out = layer_shape(layer, shape)  # checks that the branches agree
                rows[at] = Row(depth, _KIND[type(layer)], layer.name, out, p, m, True)
            else:
                out = layer_shape(layer, shape)
                p, m = _leaf_cost(layer, out, frozen)
                rows.append(Row(depth, _KIND[type(layer)], getattr(layer, "name", ""), out, p, m))
            total_p, total_m, shape = total_p + p, total_m + m, out
        return shape, total_p, total_m

    start = input_shape(spec)
    _, params, macs = visit(spec.layers, start, 0)
    return Summary(spec.name, start, tuple(rows), params, macs)


def _fmt_count(n: int) -> str:
    return f"{n:,}" if n else "--"


def human(n: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def render(summary: Summary, dataset: str) -> str:
    """A torchinfo-style plain-text table."""
    header = ("Layer (type: name)", "Output shape", "Param #", "MACs")
    body = []
    for r in summary.rows:
        label = "  " * r.depth + (f"{r.kind}: {r.name}" if r.name else r.kind)
        body.append((label, str(list(r.shape)), _fmt_count(r.params), _fmt_count(r.macs)))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = "=" * (sum(widths) + 3 * (len(widths) - 1))

    def fmt(cells: tuple[str, ...]) -> str:
        return "   ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"{summary.model} on {dataset}, input {list(summary.input_shape)} per image", line, fmt(header), line]
    out += [fmt(b) for b in body]
    out += [
        line,
        f"Trainable params: {summary.params:,}",
        f"Forward MACs per image: {summary.macs:,} ({summary.macs / 1e9:.3f} GMACs)",
        (f"Training FLOPs per image: {summary.train_flops_per_image:,} "
         f"({human(summary.train_flops_per_image, 'FLOPs')}; 3 passes x 2 FLOPs per MAC)"),
        line,
    ]
    return "\n".join(out)


def cost_per_image(spec: ModelSpec) -> dict:
    """``forward_macs`` and ``train_flops_per_image`` of a spec (this module's convention), or None
    for both when another library builds the model (a ``ModuleSpec``: no layers of ours to count)."""
    from cifarbench.models.spec import ModuleSpec

    if isinstance(spec, ModuleSpec):
        return {"forward_macs": None, "train_flops_per_image": None}
    s = summarize(spec)
    return {"forward_macs": s.macs, "train_flops_per_image": s.train_flops_per_image}
