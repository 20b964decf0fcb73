"""SGD and Adam/AdamW with torch.optim's exact update rules, applied in place.

The engine sets lr and momentum (SGD momentum, or Adam's beta1) before every step. State
per parameter: ``momentum_buffer`` (SGD) or ``exp_avg`` / ``exp_avg_sq`` (Adam/AdamW); plus
one ``step`` counter.

SGD (dampening 0), with g the gradient::

    g = g + wd * p                          (L2 decay, added to the gradient)
    buf = g on the first step, else momentum * buf + g
    p -= lr * (g + momentum * buf if nesterov else buf)

Adam / AdamW at step t::

    Adam:  g = g + wd * p          AdamW: p *= 1 - lr * wd  (decoupled, before the update)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""

from __future__ import annotations

import math

from cifarbench.backends.numpy_backend.arrays import array_module


class Optimizer:
    def __init__(self, name: str, nesterov: bool, weight_decay: float, beta2: float, eps: float, scales=()):
        self.name = name
        # param name -> (lr factor, weight-decay factor); others use (1, 1)
        self.scales = {n: (f_lr, f_wd) for n, f_lr, f_wd in scales}
        self.nesterov = nesterov
        self.wd = weight_decay
        self.beta2 = beta2
        self.eps = eps
        self.step_count = 0
        self.state: dict[str, object] = {}  # "<param>.<buffer>" -> xp array

    def step(self, params: dict, grads: dict, lr: float, momentum: float) -> None:
        self.step_count += 1
        wd = self.wd
        for name, p in params.items():
            f_lr, f_wd = self.scales.get(name, (1.0, 1.0))
            self.wd = wd * f_wd
            try:
                if self.name == "sgd":
                    self._sgd(name, p, grads[name], lr * f_lr, momentum)
                else:
                    self._adam(name, p, grads[name], lr * f_lr, momentum)
            finally:
                self.wd = wd

    def _sgd(self, name, p, g, lr, momentum):
        xp = array_module(p)
        if self.wd:
            g = g + self.wd * p
        if momentum:
            key = f"{name}.momentum_buffer"
            buf = self.state.get(key)
            if buf is None:
                buf = self.state[key] = xp.array(g, copy=True)
            else:
                buf *= momentum
                buf += g
            g = g + momentum * buf if self.nesterov else buf
        p -= lr * g

    def _adam(self, name, p, g, lr, beta1):
        xp = array_module(p)
        if self.wd and self.name == "adam":
            g = g + self.wd * p
        if self.wd and self.name == "adamw":
            p *= 1.0 - lr * self.wd
        m = self.state.setdefault(f"{name}.exp_avg", xp.zeros_like(p))
        v = self.state.setdefault(f"{name}.exp_avg_sq", xp.zeros_like(p))
        m *= beta1
        m += (1.0 - beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * (g * g)
        t = self.step_count
        denom = xp.sqrt(v)
        denom *= 1.0 / math.sqrt(1.0 - self.beta2**t)
        denom += self.eps
        p -= (lr / (1.0 - beta1**t)) * m / denom
