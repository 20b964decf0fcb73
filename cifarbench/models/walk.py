"""The one interpreter of a spec's containers; a backend brings an op table for the leaf layers.

``run_layers(layers, x, ops, ctx)`` walks Group and Residual itself: a Group runs its layers,
a Residual adds ``body(x)`` to ``shortcut(x)`` (the identity when empty; shortcut first, so a
random stream is drawn in one fixed order) and applies ``ops[ReLU]`` when ``relu_after``. Their
outputs are capture points: ``ctx.record(name, y)`` is called with each (when ``ctx`` has one)
and its return value flows on. Every other layer type is looked up in ``ops`` (type -> ``op(layer,
x, ctx)``); ``ops[ADD]``, if present, joins a residual (default ``body + skip``).

A new leaf layer type therefore needs its dataclass in ``spec.py`` and one entry in each op
table; containers, wiring and captures are never written again.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from cifarbench.models.spec import Group, Layer, ReLU, Residual

ADD = "add"  # ops[ADD](residual_layer, body, skip, ctx) -> joined
_RELU = ReLU()
Ops = Mapping[Any, Callable[..., Any]]


class UnknownLayer(TypeError):
    """A layer type the op table has no entry for."""


def run_layers(layers: Sequence[Layer], x: Any, ops: Ops, ctx: Any = None) -> Any:
    for layer in layers:
        x = run_layer(layer, x, ops, ctx)
    return x


def run_layer(layer: Layer, x: Any, ops: Ops, ctx: Any = None) -> Any:
    if isinstance(layer, Group):
        return _record(ctx, layer.name, run_layers(layer.layers, x, ops, ctx))
    if isinstance(layer, Residual):
        skip = run_layers(layer.shortcut, x, ops, ctx) if layer.shortcut else x
        body = run_layers(layer.body, x, ops, ctx)
        y = ops[ADD](layer, body, skip, ctx) if ADD in ops else body + skip
        if layer.relu_after:
            y = ops[ReLU](_RELU, y, ctx)
        return _record(ctx, layer.name, y)
    op = ops.get(type(layer))
    if op is None:
        raise UnknownLayer(f"no op for layer type {type(layer).__name__} in this backend's op table")
    return op(layer, x, ctx)


def _record(ctx: Any, name: str, y: Any) -> Any:
    record = getattr(ctx, "record", None)
    return y if record is None else record(name, y)
