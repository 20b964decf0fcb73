"""torch.optim semantics in MLX ops (SGD, Adam, AdamW).

mlx.optimizers is not used: its Adam/AdamW skip bias correction by default and its SGD
momentum is a Python float baked into a compiled graph. Here the learning rate and momentum
(beta1 for Adam) are ``mx.array`` entries of the state, so the engine's schedules change them
every step without recompiling.
"""

from __future__ import annotations

import mlx.core as mx

from cifarbench.backends.base import OPT_SLOTS, OptimConfig


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
    state["step"] = state["step"] + 1
    if opt.name == "sgd":
        return _sgd(opt, params, grads, state)
    return _adam(opt, params, grads, state)


def _sgd(opt: OptimConfig, params: dict, grads: dict, state: dict) -> dict:
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
        out[k] = p - (lr * f_lr if f_lr != 1.0 else lr) * d
    return out


def _adam(opt: OptimConfig, params: dict, grads: dict, state: dict) -> dict:
    lr, b1, b2, step = state["lr"], state["momentum"], opt.betas[1], state["step"]
    # torch evaluates bias correction with the current beta1 (momentum cycling changes it).
    step_size = lr / (1 - mx.power(b1, step))
    bc2_sqrt = mx.sqrt(1 - mx.power(mx.array(b2, mx.float32), step))
    out = {}
    for k, p in params.items():
        g = grads[k]
        f_lr, f_wd = opt.scale_of(k)
        k_lr, wd = (lr * f_lr if f_lr != 1.0 else lr), opt.weight_decay * f_wd
        if wd and opt.name == "adam":
            g = g + wd * p
        if wd and opt.name == "adamw":
            p = p * (1 - k_lr * wd)
        m = b1 * state["exp_avg"][k] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"][k] + (1 - b2) * (g * g)
        state["exp_avg"][k], state["exp_avg_sq"][k] = m, v
        out[k] = p - (step_size * f_lr if f_lr != 1.0 else step_size) * m / (mx.sqrt(v) / bc2_sqrt + opt.eps)
    return out
