"""The leaky-ReLU twin of ``cnn``: menzHSE/torch-cifar-10-cnn uses F.leaky_relu (slope 0.01) everywhere."""

from __future__ import annotations

from dataclasses import replace

from cifarbench.models.registry import register_model
from cifarbench.models.spec import ModelSpec, ReLU
from cifarbench.models.zoo.cnn import small_cnn

SLOPE = 0.01


@register_model("cnn-leaky", "small residual CNN with leaky ReLU 0.01 (menzHSE/torch-cifar-10-cnn)",
                origin="menzHSE/torch-cifar-10-cnn", recipes={"default": "cnn-leaky-adamw"})
def cnn_leaky(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    spec = small_cnn(in_channels, image_size, num_classes, slope=SLOPE, name="cnn-leaky")
    # small_cnn leaves the head's ReLU plain; the torch original makes it leaky too.
    top = tuple(ReLU(SLOPE) if isinstance(layer, ReLU) else layer for layer in spec.layers)
    return replace(spec, layers=top)
