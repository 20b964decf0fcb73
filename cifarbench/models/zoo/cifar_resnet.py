"""He et al.'s CIFAR ResNets (6n+2 layers: 16/32/64 channels) and definfo's ResNet-32.

Shortcuts: the paper's CIFAR nets use option A (identity with zero-padded channels); the spec
language has no such op, so these use option B (1x1 conv + BN projection, no bias) where the
shape changes, which adds 2,752 parameters (two projections, 16->32 and 32->64, with
their BN): resnet20 272,474 / resnet44 661,338 / resnet110 1,730,714 here, 269,722 / 658,586 /
1,727,962 with option A (the paper's 0.27 M / 0.66 M / 1.7 M).
Names follow torchvision (conv1/bn1, layerS.B.conv1, layerS.B.downsample.0/1, fc).
"""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.spec import BatchNorm, Conv, Dropout, GlobalAvgPool, Group, Layer, Linear, ModelSpec, ReLU
from cifarbench.models.zoo.resnet import basic_block


def cifar_resnet(
    name: str, n: int, in_channels: int, image_size: int, num_classes: int,
    bias: bool = False, dropout: float = 0.0,
) -> ModelSpec:
    """Stem conv 3x3 -> 16 + BN + ReLU, three stages of ``n`` basic blocks, global average pool, linear."""
    layers: list[Layer] = [
        Group("stem", (Conv("conv1", in_channels, 16, 3, pad=1, bias=bias), BatchNorm("bn1", 16), ReLU())),
    ]
    cin = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        blocks = []
        for b in range(n):
            stride = 2 if (stage > 1 and b == 0) else 1
            blocks.append(basic_block(f"layer{stage}.{b}", cin, width, stride, bias=bias))
            cin = width
        layers.append(Group(f"layer{stage}", tuple(blocks)))
    layers.append(GlobalAvgPool())
    if dropout > 0:
        layers.append(Dropout(dropout))
    layers.append(Linear("fc", 64, num_classes))
    return ModelSpec(name, tuple(layers), in_channels, image_size, num_classes,
                     capture_points=("stem", "layer1", "layer2", "layer3"))


_DESC = "ResNet-{d} for CIFAR (He et al. 2015; 1x1 conv + BN projection shortcuts, option B)"


@register_model("resnet20", _DESC.format(d=20))
def resnet20(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return cifar_resnet("resnet20", 3, in_channels, image_size, num_classes)


@register_model("resnet32", _DESC.format(d=32))
def resnet32(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return cifar_resnet("resnet32", 5, in_channels, image_size, num_classes)


@register_model("resnet56", _DESC.format(d=56))
def resnet56(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return cifar_resnet("resnet56", 9, in_channels, image_size, num_classes)


@register_model("resnet44", _DESC.format(d=44))
def resnet44(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return cifar_resnet("resnet44", 7, in_channels, image_size, num_classes)


@register_model("resnet110", _DESC.format(d=110))
def resnet110(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return cifar_resnet("resnet110", 18, in_channels, image_size, num_classes)


@register_model(
    "resnet32-definfo",
    "definfo's ResNet-32: conv biases, 1x1 conv (bias) + BN projections, dropout 0.3 before the head",
    origin="definfo/cnn-cifar-10",
    recipes={"default": "resnet32-definfo"},
)
def resnet32_definfo(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    # definfo's BN normalises over the wrong axis and keeps no running statistics; this is the
    # layout it meant, with per-channel BN.
    return cifar_resnet("resnet32-definfo", 5, in_channels, image_size, num_classes, bias=True, dropout=0.3)
