"""Optional pieces of the fast recipes that the engine applies around the backend's steps:
per-group learning rates for BN biases and the lookahead cadence (airbench94, hlb-cifar10)."""

from __future__ import annotations

from cifarbench.models.spec import BatchNorm, ModelSpec


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
