"""ResNets for small images: 3x3 stride-1 stem, no max-pool (the CIFAR variant).

Parameter names follow torchvision (``layer2.0.downsample.0.weight``) so that state dicts of
torchvision-based seed projects map one to one.
"""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.spec import BatchNorm, Conv, GlobalAvgPool, Group, Layer, Linear, ModelSpec, ReLU, Residual


def basic_block(name: str, cin: int, cout: int, stride: int) -> Residual:
    shortcut: tuple[Layer, ...] = ()
    if stride != 1 or cin != cout:
        shortcut = (Conv(f"{name}.downsample.0", cin, cout, 1, stride=stride, bias=False), BatchNorm(f"{name}.downsample.1", cout))
    return Residual(
        name,
        body=(
            Conv(f"{name}.conv1", cin, cout, 3, stride=stride, pad=1, bias=False),
            BatchNorm(f"{name}.bn1", cout),
            ReLU(),
            Conv(f"{name}.conv2", cout, cout, 3, pad=1, bias=False),
            BatchNorm(f"{name}.bn2", cout),
        ),
        shortcut=shortcut,
    )


def imagenet_style_resnet(name: str, blocks: tuple[int, ...], in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    """ResNet-18/34 layout (basic blocks, widths 64-512) with the small-image stem."""
    layers: list[Layer] = [
        Group("stem", (Conv("conv1", in_channels, 64, 3, pad=1, bias=False), BatchNorm("bn1", 64), ReLU())),
    ]
    cin = 64
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        stage_blocks = []
        for b in range(n):
            stride = 2 if (stage > 1 and b == 0) else 1
            stage_blocks.append(basic_block(f"layer{stage}.{b}", cin, width, stride))
            cin = width
        layers.append(Group(f"layer{stage}", tuple(stage_blocks)))
    layers += [GlobalAvgPool(), Linear("fc", 512, num_classes)]
    return ModelSpec(name, tuple(layers), in_channels, image_size, num_classes, capture_points=("stem", "layer1", "layer2", "layer3"))


@register_model("resnet18", "ResNet-18, CIFAR variant (mike7seven/CIFAR-10)", origin="mike7seven/CIFAR-10")
def resnet18(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return imagenet_style_resnet("resnet18", (2, 2, 2, 2), in_channels, image_size, num_classes)
