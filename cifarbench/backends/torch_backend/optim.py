"""torch.optim optimizers and their state in canonical form (``<param>.exp_avg``, ``step``...)."""

from __future__ import annotations

import numpy as np
import torch

from cifarbench.backends.base import OptimConfig
from cifarbench.errors import CheckpointError, UsageError

STATE_KEYS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq")}


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
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(opt.name)
    if cls is None:
        raise UsageError(f"unknown optimizer '{opt.name}'; valid: adam, adamw, sgd")
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
) -> dict[str, np.ndarray]:
    """Canonical optimizer state; ``steps`` counts optimizer steps (torch's SGD keeps no counter of its own)."""
    out: dict[str, np.ndarray] = {}
    for param, state in optimizer.state.items():
        if "step" in state:  # Adam's own count: it skips steps a GradScaler found inf in
            steps = int(float(state["step"]))
        for key in STATE_KEYS[name]:
            value = state.get(key)
            if value is not None:
                out[f"{names[param]}.{key}"] = _to_numpy(value)
    out["step"] = np.asarray(float(steps), dtype=np.float32)
    return out


def import_state(
    optimizer: torch.optim.Optimizer, name: str, params: dict[str, torch.Tensor], state: dict[str, np.ndarray]
) -> int:
    """Load canonical state into torch's per-parameter dicts; returns the step count."""
    if "step" not in state:
        raise CheckpointError("optimizer state has no 'step' entry")
    steps = int(round(float(np.asarray(state["step"]))))
    keys = STATE_KEYS[name]
    expected = {f"{p}.{k}" for p in params for k in keys}
    unknown = sorted(set(state) - expected - {"step"})
    if unknown:
        raise CheckpointError(f"optimizer state does not fit a {name} optimizer for this model: has {unknown[0]!r}")
    optimizer.state.clear()
    for pname, param in params.items():
        present = [k for k in keys if f"{pname}.{k}" in state]
        if not present:
            continue
        if len(present) != len(keys):
            raise CheckpointError(f"optimizer state for {pname} is incomplete: has {present}, needs {list(keys)}")
        entry: dict[str, torch.Tensor] = {}
        for key in keys:
            arr = np.asarray(state[f"{pname}.{key}"], dtype=np.float32)
            if tuple(arr.shape) != tuple(param.shape):
                raise CheckpointError(f"{pname}.{key}: shape {arr.shape} does not match parameter {tuple(param.shape)}")
            # empty_like keeps the parameter's memory format (channels_last) for the buffer
            entry[key] = torch.empty_like(param, memory_format=torch.preserve_format).copy_(torch.from_numpy(arr))
        if name != "sgd":
            # torch keeps Adam's step as a float32 CPU tensor unless capturable/fused
            fused = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
            entry["step"] = torch.tensor(float(steps), dtype=torch.float32, device=param.device if fused else "cpu")
        optimizer.state[param] = entry
    return steps
