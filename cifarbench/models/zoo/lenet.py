"""LeNet-style nets of mike7seven/CIFAR-10's history (the PyTorch CIFAR-10 tutorial net and a wide one).

Layer names follow the tutorial's module names (conv1, conv2, fc1..fc3), so old ``.pth`` state
dicts of these nets map one to one. The first linear layer is sized from the image size.
"""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.shapes import flat_features
from cifarbench.models.spec import Conv, Flatten, Group, Linear, MaxPool, ModelSpec, ReLU


def lenet_spec(name: str, in_channels: int, image_size: int, num_classes: int,
               convs: tuple[int, int], fcs: tuple[int, int]) -> ModelSpec:
    c1, c2 = convs
    features = (
        Group("block1", (Conv("conv1", in_channels, c1, 5), ReLU(), MaxPool(2, 2))),
        Group("block2", (Conv("conv2", c1, c2, 5), ReLU(), MaxPool(2, 2))),
    )
    flat = flat_features(features, in_channels, image_size)
    f1, f2 = fcs
    head = (
        Flatten(),
        Linear("fc1", flat, f1), ReLU(),
        Linear("fc2", f1, f2), ReLU(),
        Linear("fc3", f2, num_classes),
    )
    return ModelSpec(name, features + head, in_channels, image_size, num_classes,
                     capture_points=("block1", "block2"))


@register_model("lenet", "LeNet of the PyTorch CIFAR-10 tutorial, 62,006 params (mike7seven/CIFAR-10 history)",
                origin="mike7seven/CIFAR-10", recipes={"default": "lenet"})
def lenet(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return lenet_spec("lenet", in_channels, image_size, num_classes, (6, 16), (120, 84))


@register_model("lenet-large", "wide LeNet: conv 64/128 k5, fc 512/256, 1.98 M params (mike7seven/CIFAR-10 history)",
                origin="mike7seven/CIFAR-10", recipes={"onecycle": "lenet-large-onecycle"})
def lenet_large(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return lenet_spec("lenet-large", in_channels, image_size, num_classes, (64, 128), (512, 256))
