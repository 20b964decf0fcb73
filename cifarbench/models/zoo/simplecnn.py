"""definfo/cnn-cifar-10's SimpleCNN: two valid 3x3 convs, three linear layers, no BN, no dropout.

(Its README mentions batch norm and dropout; its forward pass has neither.)
The original ends in softmax; the spec yields the logits before it.
"""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.shapes import flat_features
from cifarbench.models.spec import Conv, Flatten, Group, Linear, MaxPool, ModelSpec, ReLU


@register_model("simplecnn", "definfo's SimpleCNN: conv 16/32 3x3 valid, fc 256/128, 334,442 params",
                origin="definfo/cnn-cifar-10", recipes={"default": "simplecnn"})
def simplecnn(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    features = (
        Group("block1", (Conv("conv1", in_channels, 16, 3), ReLU(), MaxPool(2, 2))),
        Group("block2", (Conv("conv2", 16, 32, 3), ReLU(), MaxPool(2, 2))),
    )
    flat = flat_features(features, in_channels, image_size)  # 32 * 6 * 6 = 1152 at 32 px
    head = (
        Flatten(),
        Linear("fc1", flat, 256), ReLU(),
        Linear("fc2", 256, 128), ReLU(),
        Linear("fc3", 128, num_classes),
    )
    return ModelSpec("simplecnn", features + head, in_channels, image_size, num_classes,
                     capture_points=("block1", "block2"))
