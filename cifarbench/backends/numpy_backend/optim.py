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
        self._scratch = None  # two flat work arrays, as big as the largest parameter, shared by all

    def step(self, params: dict, grads: dict, lr: float, momentum: float) -> None:
        self.step_count += 1
        for name, p in params.items():
            f_lr, f_wd = self.scales.get(name, (1.0, 1.0))
            update = self._sgd if self.name == "sgd" else self._adam
            update(name, p, grads[name], lr * f_lr, momentum, self.wd * f_wd, *self._work(p))

    def _work(self, p):
        """Two scratch arrays shaped like p: views of the shared flat buffers (parameters are
        updated one after the other, so one pair serves them all)."""
        s = self._scratch
        if s is None or s[0].size < p.size or s[0].dtype != p.dtype or array_module(s[0]) is not array_module(p):
            xp = array_module(p)
            n = max(p.size, 0 if s is None else s[0].size)
            s = self._scratch = (xp.empty(n, p.dtype), xp.empty(n, p.dtype))
        return s[0][: p.size].reshape(p.shape), s[1][: p.size].reshape(p.shape)

    def _sgd(self, name, p, g, lr, momentum, wd, s1, s2):
        xp = array_module(p)
        if wd:  # g + wd * p, into s1 (the caller's gradient is left alone)
            xp.multiply(p, wd, out=s1)
            s1 += g
            g = s1
        if momentum:
            key = f"{name}.momentum_buffer"
            buf = self.state.get(key)
            if buf is None:
                buf = self.state[key] = xp.array(g, copy=True)
            else:
                buf *= momentum
                buf += g
            if self.nesterov:  # g + momentum * buf, into s2
                xp.multiply(buf, momentum, out=s2)
                s2 += g
                g = s2
            else:
                g = buf
        xp.multiply(g, lr, out=s2)
        p -= s2

    def _adam(self, name, p, g, lr, beta1, wd, s1, s2):
        xp = array_module(p)
        if wd and self.name == "adam":  # g + wd * p, into s2 (free again once m and v are updated)
            xp.multiply(p, wd, out=s2)
            s2 += g
            g = s2
        if wd and self.name == "adamw":
            p *= 1.0 - lr * wd
        m = self.state.get(f"{name}.exp_avg")
        if m is None:
            m = self.state[f"{name}.exp_avg"] = xp.zeros_like(p)
        v = self.state.get(f"{name}.exp_avg_sq")
        if v is None:
            v = self.state[f"{name}.exp_avg_sq"] = xp.zeros_like(p)
        m *= beta1
        xp.multiply(g, 1.0 - beta1, out=s1)
        m += s1
        v *= self.beta2
        xp.multiply(g, g, out=s1)
        s1 *= 1.0 - self.beta2
        v += s1
        t = self.step_count
        xp.sqrt(v, out=s1)  # the denominator
        s1 *= 1.0 / math.sqrt(1.0 - self.beta2**t)
        s1 += self.eps
        xp.multiply(m, lr / (1.0 - beta1**t), out=s2)
        s2 /= s1
        p -= s2
