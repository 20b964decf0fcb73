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

from cifarbench.backends.muon import newton_schulz, ramp
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


class Grouped:
    """What ``Optimizer`` lacks for the fast recipes, added around it (base.py's contract):

    - ``frozen_after`` ramps: those parameters' lr factor is scaled by max(0, 1 - t/N) each step;
    - ``muon``: every trainable 4-D parameter takes the Muon step (nesterov momentum
      ``muon_momentum``, renormalised to ||p|| = sqrt(out), Newton-Schulz-orthogonalised update),
      the others ``Optimizer``'s SGD.

    Slots keep ``Optimizer``'s names (``<param>.momentum_buffer``) and its one ``step_count``.
    """

    def __init__(self, opt, muon: tuple[str, ...] = ()):
        self.inner = Optimizer("sgd" if opt.name == "muon" else opt.name, opt.nesterov, opt.weight_decay,
                               opt.betas[1], opt.eps, opt.scales)
        self.base_scales = dict(self.inner.scales)
        self.ramps = {k: int(n) for k, n in opt.frozen_after}
        self.muon = tuple(muon)
        self.muon_momentum, self.nesterov, self.ns_steps = opt.muon_momentum, opt.nesterov, opt.ns_steps

    # the backend reads and writes these as it does an Optimizer's
    @property
    def state(self) -> dict:
        return self.inner.state

    @state.setter
    def state(self, value: dict) -> None:
        self.inner.state = value

    @property
    def step_count(self) -> int:
        return self.inner.step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        self.inner.step_count = value

    def _factor(self, name: str, steps_taken: int) -> tuple[float, float]:
        f_lr, f_wd = self.base_scales.get(name, (1.0, 1.0))
        return f_lr * ramp(steps_taken, self.ramps.get(name, 0)), f_wd

    def step(self, params: dict, grads: dict, lr: float, momentum: float) -> None:
        t = self.inner.step_count
        self.inner.scales = {**self.base_scales, **{k: self._factor(k, t) for k in self.ramps}}
        rest = {k: p for k, p in params.items() if k not in self.muon}
        self.inner.step(rest, grads, lr, momentum)  # counts the step
        for name in self.muon:
            if name in params:
                self._muon(name, params[name], grads[name], lr * self._factor(name, t)[0])

    def _muon(self, name, p, g, lr):
        xp = array_module(p)
        mu = self.muon_momentum
        key = f"{name}.momentum_buffer"
        buf = self.state.get(key)
        if buf is None:
            buf = self.state[key] = xp.zeros_like(p)
        buf *= mu
        buf += g
        u = g + mu * buf if self.nesterov else buf
        p *= p.dtype.type(math.sqrt(p.shape[0])) / xp.sqrt(xp.sum(p * p))
        out = p.shape[0]
        ortho = newton_schulz(u.reshape(out, -1), self.ns_steps,
                              lambda x: xp.sqrt(xp.sum(x * x, axis=(-2, -1), keepdims=True)))
        p -= (lr * ortho).astype(p.dtype, copy=False).reshape(p.shape)
