"""Optional pieces of the fast recipes that the engine applies around the backend's steps:
per-group learning rates (BN biases, the head, Muon's filters), the whitening bias's freeze and
the lookahead cadence (airbench94, airbench94_muon, hlb-cifar10)."""

from __future__ import annotations

import math

from cifarbench.models.spec import BatchNorm, Conv, Linear, ModelSpec


def bn_bias_scales(spec: ModelSpec, lr_scale: float) -> tuple[tuple[str, float, float], ...]:
    """OptimConfig.scales giving BN biases ``lr_scale`` x the lr and 1/``lr_scale`` x the weight
    decay: the decay step (lr * wd) stays that of every other parameter."""
    if lr_scale == 1.0:
        return ()
    trainable = spec.param_shapes()
    return tuple(
        (f"{l.name}.bias", lr_scale, 1.0 / lr_scale)
        for l in spec.param_layers()
        if isinstance(l, BatchNorm) and f"{l.name}.bias" in trainable
    )


def head_scales(spec: ModelSpec, lr_scale: float) -> tuple[tuple[str, float, float], ...]:
    """OptimConfig.scales giving the Linear weights (the head) ``lr_scale`` x the lr, 1/``lr_scale`` x the decay."""
    if lr_scale == 1.0:
        return ()
    trainable = spec.param_shapes()
    return tuple((f"{l.name}.weight", lr_scale, 1.0 / lr_scale) for l in spec.param_layers()
                 if isinstance(l, Linear) and f"{l.name}.weight" in trainable)


def muon_scales(spec: ModelSpec, muon_lr: float, lr: float) -> tuple[tuple[str, float, float], ...]:
    """OptimConfig.scales giving every Muon filter (trainable 4-D tensor) the lr factor muon_lr / lr
    (and no weight decay: Muon resets their norm every step)."""
    from cifarbench.backends.muon import muon_params

    return tuple((k, muon_lr / lr, 0.0) for k in muon_params(spec.param_shapes()))


def whiten_bias_freeze(spec: ModelSpec, epochs: float, steps_per_epoch: int) -> tuple[tuple[str, int], ...]:
    """OptimConfig.frozen_after for the patch-whitening conv's trainable bias: its lr decays to 0 over
    ``epochs`` epochs of steps (rounded up), then it is frozen. () when ``epochs`` is 0."""
    if epochs <= 0:
        return ()
    steps = max(int(math.ceil(epochs * steps_per_epoch)), 1)
    trainable = spec.param_shapes()
    return tuple((f"{l.name}.bias", steps) for l in spec.param_layers()
                 if isinstance(l, Conv) and l.init == "whiten" and f"{l.name}.bias" in trainable)


def lookahead_decay(done_steps: int, total_steps: int, every: int, decay: float) -> float | None:
    """The decay of the lookahead update due after ``done_steps`` optimizer steps, else None.

    The pull toward the slow weights is weak early and grows as (step / total)^3; the last
    step always ends on the slow weights (decay 1), so those are the weights the run keeps.
    """
    if every <= 0:
        return None
    if done_steps >= total_steps:
        return 1.0
    if done_steps % every:
        return None
    return decay * (done_steps / total_steps) ** 3
