"""Shared by the NumPy and MLX parity tests: a plain torch.nn.functional walk of a spec, and one
optimizer step with it in float32 or float64.

It is independent of every backend (so it can referee them), and in float64 it is the "exact"
answer that float32 implementations are measured against where float32 itself cannot reach 1e-4.
Tensors are NCHW-contiguous: torch's plain CPU kernels, not oneDNN's channels_last path.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cifarbench.backends.base import OptimConfig
from cifarbench.models import spec as S

F = torch.nn.functional


def rel(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def no_dropout(layers):
    """The layers with dropout p=0 (the frameworks' random streams differ); everything else as registered."""
    out = []
    for layer in layers:
        if isinstance(layer, S.Dropout):
            layer = S.Dropout(0.0)
        elif isinstance(layer, S.Group):
            layer = dataclasses.replace(layer, layers=no_dropout(layer.layers))
        elif isinstance(layer, S.Residual):
            layer = dataclasses.replace(layer, body=no_dropout(layer.body), shortcut=no_dropout(layer.shortcut))
        out.append(layer)
    return tuple(out)


def cancelled_biases(layers) -> set[str]:
    """Biases of convs followed directly by BN: train-mode BN subtracts the batch mean, so their
    exact gradient is 0 and what any float32 backward returns there is round-off."""
    out, prev = set(), None
    for layer in layers:
        if isinstance(layer, S.BatchNorm) and isinstance(prev, S.Conv) and prev.bias:
            out.add(f"{prev.name}.bias")
        for sub in (getattr(layer, "layers", ()), getattr(layer, "body", ()), getattr(layer, "shortcut", ())):
            out |= cancelled_biases(sub)
        prev = layer
    return out


def _bn(l, t, h, train):
    n = l.name
    return F.batch_norm(h, t[f"{n}.running_mean"], t[f"{n}.running_var"], t[f"{n}.weight"], t[f"{n}.bias"],
                        train, l.momentum, l.eps)


def torch_forward(spec, t, x, train):
    """Reference forward with torch.nn.functional; t: name -> tensor (BN buffers updated in place)."""

    def run(layers, h):
        for l in layers:
            if isinstance(l, S.Conv):
                h = F.conv2d(h, t[f"{l.name}.weight"], t.get(f"{l.name}.bias"), l.stride, l.pad)
            elif isinstance(l, S.BatchNorm):
                h = _bn(l, t, h, train)
            elif isinstance(l, S.ReLU):
                h = F.leaky_relu(h, l.slope) if l.slope else F.relu(h)
            elif isinstance(l, S.GELU):
                h = F.gelu(h)
            elif isinstance(l, S.Scale):
                h = h * l.factor
            elif isinstance(l, S.MaxPool):
                h = F.max_pool2d(h, l.k, l.stride)
            elif isinstance(l, S.AvgPool):
                h = F.avg_pool2d(h, l.k, l.stride)
            elif isinstance(l, S.GlobalAvgPool):
                h = h.mean((2, 3))
            elif isinstance(l, S.Flatten):
                h = h.flatten(1)
            elif isinstance(l, S.Linear):
                h = F.linear(h, t[f"{l.name}.weight"], t.get(f"{l.name}.bias"))
            elif isinstance(l, S.Dropout):
                assert not train or l.p == 0.0
            elif isinstance(l, S.Group):
                h = run(l.layers, h)
            elif isinstance(l, S.Residual):
                h = run(l.body, h) + (run(l.shortcut, h) if l.shortcut else h)
                h = F.relu(h) if l.relu_after else h
            else:
                raise TypeError(type(l))
        return h

    return run(spec.layers, x)


def normalised_nchw(x, mean, std, dtype=np.float32):
    """uint8 NHWC images -> normalised NCHW, as the backends' input pipelines do."""
    x = (x / 255.0 - np.array(mean, dtype)) / np.array(std, dtype)
    return x.astype(dtype).transpose(0, 3, 1, 2)


@dataclasses.dataclass
class StepResult:
    new: dict[str, np.ndarray]  # parameters and buffers after the step
    loss: float
    logits: np.ndarray
    grads: dict[str, np.ndarray]
    opt_state: dict[str, np.ndarray]  # canonical names: "<param>.momentum_buffer" / ".exp_avg"


def reference_step(spec, state, x, y, opt: OptimConfig, lr, momentum, mean, std, label_smoothing=0.0,
                   dtype=torch.float32, inputs=None) -> StepResult:
    """One training step (train-mode forward, cross-entropy, backward, torch.optim step) in ``dtype``.
    The engine passes ``momentum`` as SGD's momentum or Adam's beta1, as here.

    inputs: the normalised NCHW batch exactly as a backend computed it from ``x`` in float32.
    Given, every run starts from the same bits: where a ReLU input sits within round-off of 0,
    1-ulp input differences alone decide its side (measured: MLX and torch float32 agreed to 1e-5
    on resnet32 from MLX's normalised bits, 2e-2 apart from numpy-normalised bits)."""
    names = list(spec.param_shapes())
    t = {k: torch.tensor(np.asarray(v, np.float64), dtype=dtype, requires_grad=k in names) for k, v in state.items()}
    params = [t[k] for k in names]
    if opt.name == "sgd":
        topt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay)
    else:
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        topt = cls(params, lr=lr, betas=(momentum, opt.betas[1]), eps=opt.eps, weight_decay=opt.weight_decay)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    xin = normalised_nchw(x, mean, std, np_dtype) if inputs is None else np.asarray(inputs, np_dtype)
    logits = torch_forward(spec, t, torch.tensor(xin), train=True)
    loss = F.cross_entropy(logits, torch.tensor(y, dtype=torch.int64), label_smoothing=label_smoothing)
    loss.backward()
    grads = {k: t[k].grad.detach().numpy().copy() for k in names}
    topt.step()
    key = "momentum_buffer" if opt.name == "sgd" else "exp_avg"
    return StepResult(
        new={k: v.detach().numpy().copy() for k, v in t.items()},
        loss=float(loss.item()),
        logits=logits.detach().numpy(),
        grads=grads,
        opt_state={f"{k}.{key}": topt.state[p][key].numpy().copy() for k, p in zip(names, params)},
    )


def flat(d, names) -> np.ndarray:
    return np.concatenate([np.asarray(d[k], np.float64).ravel() for k in names])


def float32_noise(spec, state, x, y, opt, lr, momentum, mean, std, label_smoothing, inputs, names, field="new"):
    """(float64 result, torch float32's distance to it) for one step from the backend's input bits.

    One float32 run is a poor measure of float32's reach on deep nets: whether a ReLU input within
    round-off of 0 flips is a coin toss, so torch can land 1e-6 from float64 where another correct
    float32 engine lands 7e-4 (numpy resnet34). torch's distance is therefore the largest over the
    same step from ``inputs`` and from ``inputs`` moved by one ulp either way: three runs that
    differ only by float32 rounding of the batch. ``field``: "new" (weights after the step) or
    "opt_state" (``names`` are then optimizer-state keys, e.g. "<param>.exp_avg").
    """
    exact = flat(getattr(reference_step(spec, state, x, y, opt, lr, momentum, mean, std, label_smoothing,
                                        dtype=torch.float64, inputs=inputs), field), names)
    nudged = [inputs, np.nextafter(inputs, np.float32(np.inf)), np.nextafter(inputs, np.float32(-np.inf))]
    dists = [rel(flat(getattr(reference_step(spec, state, x, y, opt, lr, momentum, mean, std, label_smoothing,
                                             inputs=v), field), names), exact) for v in nudged]
    return exact, max(dists)
