"""torch.optim optimizers and their state in canonical form (``<param>.exp_avg``, ``step``...)."""

from __future__ import annotations

import math

import numpy as np
import torch

from cifarbench.backends.base import OPT_SLOTS, OptimConfig
from cifarbench.backends.muon import muon_params, newton_schulz, ramp


def _groups(params: list[torch.Tensor], names: list[str] | None, opt: OptimConfig):
    """Plain params, or one param group per (lr factor, wd factor, frozen_after N, Muon or not)."""
    muon = set(muon_params({n: p.shape for n, p in zip(names, params)})) if opt.name == "muon" and names else set()
    if not (opt.scales or opt.frozen_after or muon) or names is None:
        return params
    groups: dict[tuple, list[torch.Tensor]] = {}
    for name, p in zip(names, params):
        groups.setdefault((*opt.scale_of(name), opt.ramp_of(name), name in muon), []).append(p)
    return [{"params": ps, "lr_factor": f_lr, "weight_decay": 0.0 if is_muon else opt.weight_decay * f_wd,
             "ramp": ramp_n, "muon": is_muon} for (f_lr, f_wd, ramp_n, is_muon), ps in groups.items()]


def make_optimizer(
    params: list[torch.Tensor], opt: OptimConfig, device: torch.device, names: list[str] | None = None,
    compile_ns: bool = False,
) -> torch.optim.Optimizer | EagerOptimizer:
    # foreach batches the per-parameter updates into a few kernels; it pays off on GPUs. On CUDA the
    # fused kernels go further, and only they let GradScaler (fp16) step without a host sync: it hands
    # them its found-inf flag on the device instead of reading it back every step.
    fused = True if device.type == "cuda" else None
    foreach = None if fused else device.type != "cpu"
    params = _groups(params, names, opt)
    if opt.name == "muon":
        # bf16 Newton-Schulz on CUDA only (the published fast path); float32 everywhere else
        return Muon(params, momentum=opt.momentum, muon_momentum=opt.muon_momentum, nesterov=opt.nesterov,
                    weight_decay=opt.weight_decay, ns_steps=opt.ns_steps,
                    ns_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, compile_ns=compile_ns)
    if device.type == "cpu" and opt.name in ("sgd", "adam", "adamw"):
        return EagerOptimizer(params, opt)
    if opt.name == "sgd":
        return torch.optim.SGD(
            params, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay, foreach=foreach,
            fused=fused,
        )
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt.name]  # the name is checked by Backend
    return cls(params, lr=0.0, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay, foreach=foreach,
               fused=fused)


class EagerOptimizer:
    """torch.optim's SGD, Adam and AdamW on CPU tensors, without torch.optim.

    Building any ``torch.optim.Optimizer`` imports ``torch._dynamo`` (its ``add_param_group`` is
    wrapped to keep dynamo out), about 0.8 s of a CPU run's start-up whatever the foreach/fused
    flags say. On the CPU torch.optim takes its single-tensor path (no foreach, no fused
    kernels): this class is that path, the same tensor operations in the same order, so its
    weights and state are bit-identical to torch.optim's (tested step for step). Its state has
    torch.optim's layout (``momentum_buffer``; ``step`` as a float32 CPU tensor, ``exp_avg``,
    ``exp_avg_sq``), so ``export_state``/``import_state`` read and write either.
    """

    def __init__(self, params, opt: OptimConfig):
        self.name = opt.name
        defaults = {"lr": 0.0, "weight_decay": opt.weight_decay}
        if opt.name == "sgd":
            defaults.update(momentum=opt.momentum, nesterov=opt.nesterov, dampening=0.0)
        else:
            defaults.update(betas=tuple(opt.betas), eps=opt.eps)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_()
                    p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._sgd if self.name == "sgd" else self._adam)(group, p, p.grad)
        return None

    def _sgd(self, group, p, grad) -> None:
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        if wd != 0:
            grad = grad.add(p, alpha=wd)
        if momentum != 0:
            state = self.state.setdefault(p, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(grad, alpha=-lr)

    def _adam(self, group, p, grad) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        state = self.state.setdefault(p, {})
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step_t += 1
        if wd != 0:
            if self.name == "adamw":
                p.mul_(1 - lr * wd)
            else:
                grad = grad.add(p, alpha=wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)


def _fro(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)


_COMPILED_NS = {}


def _ns_function(compiled: bool):
    if not compiled:
        return newton_schulz
    if "ns" not in _COMPILED_NS:  # one compiled graph per filter-stack shape (dynamic=False)
        _COMPILED_NS["ns"] = torch.compile(newton_schulz, dynamic=False)
    return _COMPILED_NS["ns"]


class Muon(torch.optim.Optimizer):
    """base.py's Muon contract: groups with ``muon=True`` take the Muon step, the others torch's SGD.

    Fast path: per group, the filters of one shape are stacked and orthogonalised in one batched
    Newton-Schulz call (``ns_dtype``: bf16 on CUDA), optionally through torch.compile; the SGD
    groups use foreach kernels. lr/momentum come from ``set_hyper`` before every step.
    """

    def __init__(self, params, momentum: float, muon_momentum: float, nesterov: bool, weight_decay: float,
                 ns_steps: int = 3, ns_dtype=torch.float32, compile_ns: bool = False):
        defaults = dict(lr=0.0, lr_factor=1.0, momentum=momentum, weight_decay=weight_decay, ramp=0, muon=False)
        super().__init__(params, defaults)
        self.muon_momentum, self.nesterov, self.ns_steps = muon_momentum, nesterov, ns_steps
        self.ns_dtype, self._ns = ns_dtype, _ns_function(compile_ns)

    def _buffers(self, ps: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for p in ps:
            st = self.state[p]
            if "momentum_buffer" not in st:  # zero: mu * 0 + g = g, torch SGD's first buffer
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(st["momentum_buffer"])
        return out

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if ps:
                (self._muon_step if group["muon"] else self._sgd_step)(group, ps)
        return None

    def _sgd_step(self, group, ps):
        grads = [p.grad for p in ps]
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd:
            grads = torch._foreach_add(grads, ps, alpha=wd)
        bufs = self._buffers(ps)
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, grads)
        d = torch._foreach_add(grads, bufs, alpha=mom) if self.nesterov else bufs
        torch._foreach_add_(ps, d, alpha=-lr)

    def _muon_step(self, group, ps):
        mu, lr = self.muon_momentum, group["lr"]
        grads = [p.grad for p in ps]
        bufs = self._buffers(ps)
        torch._foreach_mul_(bufs, mu)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=mu) if self.nesterov else bufs
        # renormalise each filter to Frobenius norm sqrt(out channels)
        norms = torch._foreach_norm(ps)
        torch._foreach_mul_(ps, [math.sqrt(p.shape[0]) / n for p, n in zip(ps, norms)])
        by_shape: dict[tuple, list[int]] = {}
        for i, p in enumerate(ps):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for shape, idx in by_shape.items():
            stack = torch.stack([updates[i].reshape(shape[0], -1) for i in idx]).to(self.ns_dtype)
            ortho = self._ns(stack, self.ns_steps, _fro).to(ps[idx[0]].dtype)
            for j, i in enumerate(idx):
                ps[i].add_(ortho[j].view(shape), alpha=-lr)


def set_hyper(optimizer: torch.optim.Optimizer, name: str, lr: float, momentum: float, steps_taken: int = 0) -> None:
    """lr x the group's factor (x its frozen_after ramp at this step count), and the engine's momentum."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0) * ramp(steps_taken, group.get("ramp", 0))
        if name in ("sgd", "muon"):
            group["momentum"] = momentum  # a Muon group keeps its own fixed muon_momentum
        else:
            group["betas"] = (momentum, group["betas"][1])


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def export_state(
    optimizer: torch.optim.Optimizer, name: str, names: dict[torch.Tensor, str], steps: int
) -> tuple[dict[str, np.ndarray], int]:
    """(slots by canonical key, step count); ``steps`` counts optimizer steps (torch's SGD keeps no counter)."""
    out: dict[str, np.ndarray] = {}
    for param, state in optimizer.state.items():
        if "step" in state:  # Adam's own count: it skips steps a GradScaler found inf in
            steps = int(float(state["step"]))
        for key in OPT_SLOTS[name]:
            value = state.get(key)
            if value is not None:
                out[f"{names[param]}.{key}"] = _to_numpy(value)
    return out, steps


def import_state(
    optimizer: torch.optim.Optimizer, name: str, params: dict[str, torch.Tensor], slots: dict[str, np.ndarray],
    steps: int,
) -> None:
    """Load validated canonical slots into torch's per-parameter dicts (absent: not stepped yet)."""
    optimizer.state.clear()
    fused = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    for pname, param in params.items():
        if f"{pname}.{OPT_SLOTS[name][0]}" not in slots:
            continue
        # empty_like keeps the parameter's memory format (channels_last) for the buffer
        entry = {key: torch.empty_like(param, memory_format=torch.preserve_format).copy_(
            torch.from_numpy(slots[f"{pname}.{key}"])) for key in OPT_SLOTS[name]}
        if name in ("adam", "adamw"):
            # torch keeps Adam's step as a float32 CPU tensor unless capturable/fused
            entry["step"] = torch.tensor(float(steps), dtype=torch.float32, device=param.device if fused else "cpu")
        optimizer.state[param] = entry
