"""torch.optim semantics in MLX ops (SGD, Adam, AdamW), and Muon (base.py).

mlx.optimizers is not used: its Adam/AdamW skip bias correction by default and its SGD
momentum is a Python float baked into a compiled graph. Here the learning rate and momentum
(beta1 for Adam) are ``mx.array`` entries of the state, so the engine's schedules change them
every step without recompiling.
"""

from __future__ import annotations

import math

import mlx.core as mx

from cifarbench.backends.base import OPT_SLOTS, OptimConfig
from cifarbench.backends.muon import muon_params, newton_schulz


def init_state(opt: OptimConfig, params: dict) -> dict:
    """Scalars (lr, momentum, step) plus zeroed per-parameter slots.

    A zero SGD buffer reproduces torch's "first buffer = first gradient": m * 0 + g = g.
    """
    state = {"lr": mx.array(0.0), "momentum": mx.array(float(opt.initial_momentum)), "step": mx.array(0.0)}
    for slot in OPT_SLOTS[opt.name]:
        state[slot] = {k: mx.zeros_like(v) for k, v in params.items()}
    return state


def apply(opt: OptimConfig, params: dict, grads: dict, state: dict) -> dict:
    """One step; returns the new parameters and updates ``state`` in place."""
    taken = state["step"]
    state["step"] = state["step"] + 1
    if opt.name == "muon":
        return _muon(opt, params, grads, state, taken)
    if opt.name == "sgd":
        return _sgd(opt, params, grads, state, taken)
    return _adam(opt, params, grads, state, taken)


def _ramp(opt: OptimConfig, k: str, taken):
    """frozen_after's max(0, 1 - t/N) as a traced scalar (None: the parameter has no ramp)."""
    n = opt.ramp_of(k)
    return mx.maximum(1.0 - taken / n, 0.0) if n else None


def _fro(x):
    return mx.sqrt((x * x).sum(axis=(-2, -1), keepdims=True))


def _muon(opt: OptimConfig, params: dict, grads: dict, state: dict, taken) -> dict:
    """Muon for the 4-D filters (base.py), this module's SGD for the rest."""
    filters = set(muon_params({k: v.shape for k, v in params.items()}))
    out = _sgd(opt, {k: v for k, v in params.items() if k not in filters}, grads, state, taken)
    lr, mu, bufs = state["lr"], opt.muon_momentum, state["momentum_buffer"]
    for k in filters:
        p, g = params[k], grads[k]
        buf = mu * bufs[k] + g
        bufs[k] = buf
        u = g + mu * buf if opt.nesterov else buf
        p = p * (math.sqrt(p.shape[0]) / mx.sqrt((p * p).sum()))
        ortho = newton_schulz(u.reshape(p.shape[0], -1), opt.ns_steps, _fro).reshape(p.shape)
        f_lr = opt.scale_of(k)[0]
        step_lr = lr * f_lr if f_lr != 1.0 else lr
        r = _ramp(opt, k, taken)
        out[k] = p - (step_lr if r is None else step_lr * r) * ortho
    return out


def _sgd(opt: OptimConfig, params: dict, grads: dict, state: dict, taken) -> dict:
    lr, m, bufs = state["lr"], state["momentum"], state["momentum_buffer"]
    out = {}
    for k, p in params.items():
        g = grads[k]
        f_lr, f_wd = opt.scale_of(k)  # Python floats: fixed per compiled graph, like the optimizer kind
        if opt.weight_decay:
            g = g + (opt.weight_decay * f_wd) * p
        buf = m * bufs[k] + g
        bufs[k] = buf
        d = g + m * buf if opt.nesterov else buf
        step_lr, r = (lr * f_lr if f_lr != 1.0 else lr), _ramp(opt, k, taken)
        out[k] = p - (step_lr if r is None else step_lr * r) * d
    return out


def _adam(opt: OptimConfig, params: dict, grads: dict, state: dict, taken) -> dict:
    lr, b1, b2, step = state["lr"], state["momentum"], opt.betas[1], state["step"]
    # torch evaluates bias correction with the current beta1 (momentum cycling changes it).
    step_size = lr / (1 - mx.power(b1, step))
    bc2_sqrt = mx.sqrt(1 - mx.power(mx.array(b2, mx.float32), step))
    out = {}
    for k, p in params.items():
        g = grads[k]
        f_lr, f_wd = opt.scale_of(k)
        k_lr, wd = (lr * f_lr if f_lr != 1.0 else lr), opt.weight_decay * f_wd
        r = _ramp(opt, k, taken)
        k_lr = k_lr if r is None else k_lr * r
        if wd and opt.name == "adam":
            g = g + wd * p
        if wd and opt.name == "adamw":
            p = p * (1 - k_lr * wd)
        m = b1 * state["exp_avg"][k] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"][k] + (1 - b2) * (g * g)
        state["exp_avg"][k], state["exp_avg_sq"][k] = m, v
        k_step = step_size * f_lr if f_lr != 1.0 else step_size
        out[k] = p - (k_step if r is None else k_step * r) * m / (mx.sqrt(v) / bc2_sqrt + opt.eps)
    return out
