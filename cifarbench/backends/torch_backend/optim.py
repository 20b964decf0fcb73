"""torch.optim optimizers and their state in canonical form (``<param>.exp_avg``, ``step``...)."""

from __future__ import annotations

import numpy as np
import torch

from cifarbench.backends.base import OPT_SLOTS, OptimConfig


def _groups(params: list[torch.Tensor], names: list[str] | None, opt: OptimConfig):
    """Plain params, or one param group per (lr factor, wd factor) of ``opt.scales``."""
    if not opt.scales or names is None:
        return params
    groups: dict[tuple[float, float], list[torch.Tensor]] = {}
    for name, p in zip(names, params):
        groups.setdefault(opt.scale_of(name), []).append(p)
    return [{"params": ps, "lr_factor": f_lr, "weight_decay": opt.weight_decay * f_wd} for (f_lr, f_wd), ps in groups.items()]


def make_optimizer(
    params: list[torch.Tensor], opt: OptimConfig, device: torch.device, names: list[str] | None = None
) -> torch.optim.Optimizer:
    # foreach batches the per-parameter updates into a few kernels; it pays off on GPUs. On CUDA the
    # fused kernels go further, and only they let GradScaler (fp16) step without a host sync: it hands
    # them its found-inf flag on the device instead of reading it back every step.
    fused = True if device.type == "cuda" else None
    foreach = None if fused else device.type != "cpu"
    params = _groups(params, names, opt)
    if opt.name == "sgd":
        return torch.optim.SGD(
            params, lr=0.0, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay, foreach=foreach,
            fused=fused,
        )
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt.name]  # the name is checked by Backend
    return cls(params, lr=0.0, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay, foreach=foreach,
               fused=fused)


def set_hyper(optimizer: torch.optim.Optimizer, name: str, lr: float, momentum: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)
        if name == "sgd":
            group["momentum"] = momentum
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
        if name != "sgd":
            # torch keeps Adam's step as a float32 CPU tensor unless capturable/fused
            entry["step"] = torch.tensor(float(steps), dtype=torch.float32, device=param.device if fused else "cpu")
        optimizer.state[param] = entry
