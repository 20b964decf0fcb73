"""A model spec turned into a tree of nodes that run forward and backward by hand.

Each node's ``forward`` keeps what its ``backward`` needs (the cache) on the node itself, so
one forward must be followed by at most one backward. Parameters live in ``Net.params``
(internal layout: conv OHWI, everything else canonical), gradients land in ``Net.grads``.

Activations flow channels-last (NHWC); the network input is converted from NCHW once.
"""

from __future__ import annotations

import os

from cifarbench.backends.numpy_backend import conv, layers, norm
from cifarbench.backends.numpy_backend.arrays import Workspace, add_into
from cifarbench.models import spec as S

# im2col bytes per chunk of images on NumPy. A chunk is gathered, then multiplied in GEMM pieces
# (arrays.matmul_rows) that each read a cache-sized part of it; bigger chunks mean fewer calls, and so
# fewer hand-overs of the GIL between the lane threads. Measured on a 2-core Xeon (2 MiB L2 a core),
# interleaved runs, against 2 MiB: 8 MiB 9% faster for resnet20 b128 at 2 threads, 1-3% at 1 thread
# (cnn b64: 3% at 1 thread, equal at 2); 32 MiB 4% slower than 8. On an EPYC (1 MiB L2), before the
# GEMM pieces, 2 MiB had beaten 1, 3, 4 and 16 MiB (benchmarks/results/numpy_vs_torch-epyc-2core-threads.txt).
CHUNK_BYTES = int(os.environ.get("CIFARBENCH_NUMPY_CHUNK_BYTES", 8 << 20))


class Net:
    """Shared state of one model: parameters, buffers, gradients, scratch, RNG, mode flags."""

    def __init__(self, model_spec: S.ModelSpec, xp, dtype):
        self.spec = model_spec
        self.xp = xp
        self.dtype = dtype
        self.params: dict[str, object] = {}
        self.buffers: dict[str, object] = {}
        self.grads: dict[str, object] = {}
        # NumPy: convolutions in cache-sized chunks of images; CuPy: whole batches (see Workspace)
        self.ws = Workspace(CHUNK_BYTES if xp.__name__ == "numpy" else None)
        self.rng = xp.random.default_rng(0)
        self.train = False
        self.dropout = True
        self.dropout_rate: float | None = None  # set_dropout: every Dropout layer's p, else the spec's
        self.captures: dict[str, object] = {}
        self.capture_names: frozenset[str] = frozenset()
        self.root = Seq(None, model_spec.layers, need_dx=False, owned=False)

    def forward(self, x_nhwc, train: bool, dropout: bool = True, capture=()):
        self.train, self.dropout = train, dropout
        self.capture_names = frozenset(capture)
        self.captures = {}
        return self.root.forward(x_nhwc, self)

    def backward(self, dlogits) -> None:
        self.root.backward(dlogits, self)

    def weight(self, key: str):
        """A weight by canonical name: frozen ones (``trainable_weight=False``) live among the buffers."""
        return self.params[key] if key in self.params else self.buffers[key]


class Seq:
    """A sequence of layers (the model, a Group, a residual branch); a named one is a capture point."""

    def __init__(self, name, specs, need_dx: bool, owned: bool):
        self.name = name
        self.nodes = []
        for i, s in enumerate(specs):
            if isinstance(s, S.ReLU) and s.slope == 0.0 and self.nodes and isinstance(self.nodes[-1], BatchNormNode):
                self.nodes[-1].relu = True  # BatchNorm then ReLU: one fused node (see norm.py)
                continue
            # Only the first node sees the sequence's input: it may need no dx (model input)
            # and must not overwrite it (a residual input is read by both branches). A
            # dropout may hand its input through unchanged, so it passes ownership on as is.
            self.nodes.append(make_node(s, need_dx or i > 0, owned))
            owned = owned if isinstance(s, S.Dropout) else True

    def forward(self, x, net: Net):
        for node in self.nodes:
            x = node.forward(x, net)
        if self.name is not None and self.name in net.capture_names:
            net.captures[self.name] = x.copy()
        return x

    def backward(self, dy, net: Net):
        for node in reversed(self.nodes):
            dy = node.backward(dy, net)
            if dy is None:
                break
        return dy


class ConvNode:
    def __init__(self, s: S.Conv, need_dx: bool):
        self.s, self.need_dx = s, need_dx

    def forward(self, x, net):
        s = self.s
        self.x = x if net.train else None  # eval keeps nothing for a backward
        return conv.conv2d_forward(x, net.weight(f"{s.name}.weight"), net.params.get(f"{s.name}.bias"), s.stride, s.pad, net.ws)

    def backward(self, dy, net):
        s = self.s
        dx, dw, db = conv.conv2d_backward(
            dy, self.x, net.weight(f"{s.name}.weight"), s.stride, s.pad, net.ws, self.need_dx, s.bias
        )
        if s.trainable_weight:
            net.grads[f"{s.name}.weight"] = dw
        if s.bias:
            net.grads[f"{s.name}.bias"] = db
        self.x = None
        return dx


class BatchNormNode:
    """BatchNorm, with the ReLU that follows it fused in when there is one (``relu``)."""

    def __init__(self, s: S.BatchNorm, owned: bool):
        self.s, self.owned, self.relu = s, owned, False

    def forward(self, x, net):
        n = self.s.name
        gamma, beta = net.weight(f"{n}.weight"), net.params[f"{n}.bias"]
        rm, rv = net.buffers[f"{n}.running_mean"], net.buffers[f"{n}.running_var"]
        if not net.train:
            return norm.batchnorm_eval_forward(x, gamma, beta, rm, rv, self.s.eps, net.ws, self.relu)
        y, self.cache, mean, var = norm.batchnorm_train_forward(x, gamma, beta, self.s.eps, self.owned, net.ws,
                                                                self.relu)
        norm.update_running(rm, rv, mean, var, x.size // x.shape[-1], self.s.momentum)
        return y

    def backward(self, dy, net):
        n = self.s.name
        dx, dgamma, net.grads[f"{n}.bias"] = norm.batchnorm_backward(dy, self.cache, net.weight(f"{n}.weight"),
                                                                     net.ws)
        if self.s.trainable_weight:
            net.grads[f"{n}.weight"] = dgamma
        self.cache = None
        return dx


class ReLUNode:
    def __init__(self, s: S.ReLU, owned: bool):
        self.slope, self.owned = s.slope, owned

    def forward(self, x, net, skip=None):
        y, mask = layers.relu_forward(x, self.slope, self.owned, net.ws, need_mask=net.train, skip=skip)
        self.mask = mask if net.train else None
        return y

    def backward(self, dy, net):
        return layers.relu_backward(dy, self.mask, self.slope, net.ws)


class GELUNode:
    def forward(self, x, net):
        y, cache = layers.gelu_forward(x)
        self.cache = cache if net.train else None
        return y

    def backward(self, dy, net):
        dx = layers.gelu_backward(dy, self.cache)
        self.cache = None
        return dx


class ScaleNode:
    def __init__(self, s: S.Scale):
        self.factor = s.factor

    def forward(self, x, net):
        return layers.scale_forward(x, self.factor)

    def backward(self, dy, net):
        return layers.scale_backward(dy, self.factor)


class MaxPoolNode:
    def __init__(self, s: S.MaxPool):
        self.k, self.st, self.pad = s.k, s.stride, s.pad

    def forward(self, x, net):
        y, cache = layers.maxpool_forward(x, self.k, self.st, self.pad, net.ws)
        self.cache = cache if net.train else None
        return y

    def backward(self, dy, net):
        return layers.maxpool_backward(dy, self.cache, self.k, self.st, self.pad, net.ws)


class AvgPoolNode:
    def __init__(self, s: S.AvgPool):
        self.k, self.st = s.k, s.stride

    def forward(self, x, net):
        self.shape = x.shape
        return layers.avgpool_forward(x, self.k, self.st)

    def backward(self, dy, net):
        return layers.avgpool_backward(dy, self.shape, self.k, self.st)


class GlobalAvgPoolNode:
    def forward(self, x, net):
        self.shape = x.shape
        return layers.global_avgpool_forward(x)

    def backward(self, dy, net):
        return layers.global_avgpool_backward(dy, self.shape)


class FlattenNode:
    def forward(self, x, net):
        self.shape = x.shape
        return layers.flatten_forward(x)

    def backward(self, dy, net):
        return layers.flatten_backward(dy, self.shape)


class LinearNode:
    def __init__(self, s: S.Linear, need_dx: bool):
        self.s, self.need_dx = s, need_dx

    def forward(self, x, net):
        self.x = x if net.train else None
        return layers.linear_forward(x, net.params[f"{self.s.name}.weight"], net.params.get(f"{self.s.name}.bias"))

    def backward(self, dy, net):
        s = self.s
        dx, dw, db = layers.linear_backward(dy, self.x, net.params[f"{s.name}.weight"], self.need_dx, s.bias)
        net.grads[f"{s.name}.weight"] = dw
        if s.bias:
            net.grads[f"{s.name}.bias"] = db
        self.x = None
        return dx


class DropoutNode:
    def __init__(self, s: S.Dropout):
        self.p = s.p

    def forward(self, x, net):
        self.mask = None
        p = self.p if net.dropout_rate is None else net.dropout_rate
        if not (net.train and net.dropout) or p == 0.0:
            return x
        y, self.mask = layers.dropout_forward(x, p, net.rng)
        return y

    def backward(self, dy, net):
        return dy if self.mask is None else layers.dropout_backward(dy, self.mask)


class ResidualNode:
    """out = body(x) + shortcut(x), then ReLU if relu_after."""

    def __init__(self, s: S.Residual, need_dx: bool):
        self.name = s.name
        self.body = Seq(None, s.body, need_dx, owned=False)
        self.shortcut = Seq(None, s.shortcut, need_dx, owned=False) if s.shortcut else None
        self.relu = ReLUNode(S.ReLU(), owned=True) if s.relu_after else None
        self.need_dx = need_dx

    def forward(self, x, net):
        out = self.body.forward(x, net)
        if out is x:  # a body of dropouts only, in eval mode
            out = out.copy()
        skip = self.shortcut.forward(x, net) if self.shortcut else x
        if self.relu:  # out + skip, then the ReLU: one pass over each piece
            out = self.relu.forward(out, net, skip)
        else:
            add_into(out, skip, net.ws)
        if self.name in net.capture_names:
            net.captures[self.name] = out.copy()
        return out

    def backward(self, dy, net):
        if self.relu:
            dy = self.relu.backward(dy, net)
        dx = self.body.backward(dy, net)
        dskip = self.shortcut.backward(dy, net) if self.shortcut else dy
        if not self.need_dx:
            return None
        add_into(dx, dskip, net.ws)
        return dx


def make_node(s, need_dx: bool, owned: bool):
    if isinstance(s, S.Conv):
        return ConvNode(s, need_dx)
    if isinstance(s, S.BatchNorm):
        return BatchNormNode(s, owned)
    if isinstance(s, S.ReLU):
        return ReLUNode(s, owned)
    if isinstance(s, S.GELU):
        return GELUNode()
    if isinstance(s, S.Scale):
        return ScaleNode(s)
    if isinstance(s, S.MaxPool):
        return MaxPoolNode(s)
    if isinstance(s, S.AvgPool):
        return AvgPoolNode(s)
    if isinstance(s, S.GlobalAvgPool):
        return GlobalAvgPoolNode()
    if isinstance(s, S.Flatten):
        return FlattenNode()
    if isinstance(s, S.Linear):
        return LinearNode(s, need_dx)
    if isinstance(s, S.Dropout):
        return DropoutNode(s)
    if isinstance(s, S.Group):
        return Seq(s.name, s.layers, need_dx, owned)
    if isinstance(s, S.Residual):
        return ResidualNode(s, need_dx)
    raise TypeError(f"numpy backend: unsupported layer {type(s).__name__}")
