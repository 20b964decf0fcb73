"""ResNets for small images: 3x3 stride-1 stem, no max-pool (the CIFAR variant), and torchvision's
ImageNet ResNets (7x7 stride-2 stem + 3x3 stride-2 max-pool) that ``--pretrained`` fine-tunes.

Parameter names follow torchvision (``layer2.0.downsample.0.weight``) so that state dicts of
torchvision-based seed projects map one to one.
"""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.spec import BatchNorm, Conv, GlobalAvgPool, Group, Layer, Linear, MaxPool, ModelSpec, ReLU, Residual


def projection(name: str, cin: int, cout: int, stride: int, bias: bool = False) -> tuple[Layer, ...]:
    """The 1x1 conv + BN shortcut (He et al.'s option B) used where the shape changes, else identity."""
    if stride == 1 and cin == cout:
        return ()
    return (Conv(f"{name}.downsample.0", cin, cout, 1, stride=stride, bias=bias), BatchNorm(f"{name}.downsample.1", cout))


def basic_block(name: str, cin: int, cout: int, stride: int, bias: bool = False) -> Residual:
    """Two 3x3 convs; ``bias=True`` gives every conv a bias (definfo's NumPy ResNet-32 has them)."""
    return Residual(
        name,
        body=(
            Conv(f"{name}.conv1", cin, cout, 3, stride=stride, pad=1, bias=bias),
            BatchNorm(f"{name}.bn1", cout),
            ReLU(),
            Conv(f"{name}.conv2", cout, cout, 3, pad=1, bias=bias),
            BatchNorm(f"{name}.bn2", cout),
        ),
        shortcut=projection(name, cin, cout, stride, bias),
    )


def bottleneck_block(name: str, cin: int, planes: int, stride: int, expansion: int = 4) -> Residual:
    """torchvision's Bottleneck (v1.5: the stride sits on the 3x3 conv)."""
    cout = planes * expansion
    return Residual(
        name,
        body=(
            Conv(f"{name}.conv1", cin, planes, 1, bias=False),
            BatchNorm(f"{name}.bn1", planes),
            ReLU(),
            Conv(f"{name}.conv2", planes, planes, 3, stride=stride, pad=1, bias=False),
            BatchNorm(f"{name}.bn2", planes),
            ReLU(),
            Conv(f"{name}.conv3", planes, cout, 1, bias=False),
            BatchNorm(f"{name}.bn3", cout),
        ),
        shortcut=projection(name, cin, cout, stride),
    )


def imagenet_style_resnet(
    name: str, blocks: tuple[int, ...], in_channels: int, image_size: int, num_classes: int, bottleneck: bool = False,
    imagenet_stem: bool = False,
) -> ModelSpec:
    """ResNet-18/34 (basic blocks) or -50 (bottlenecks), widths 64-512, with the small-image stem,
    or (``imagenet_stem``) torchvision's own: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool (pad 1)."""
    expansion = 4 if bottleneck else 1
    if imagenet_stem:
        stem: tuple[Layer, ...] = (Conv("conv1", in_channels, 64, 7, stride=2, pad=3, bias=False), BatchNorm("bn1", 64),
                                   ReLU(), MaxPool(3, 2, pad=1))
    else:
        stem = (Conv("conv1", in_channels, 64, 3, pad=1, bias=False), BatchNorm("bn1", 64), ReLU())
    layers: list[Layer] = [Group("stem", stem)]
    cin = 64
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        stage_blocks = []
        for b in range(n):
            stride = 2 if (stage > 1 and b == 0) else 1
            if bottleneck:
                stage_blocks.append(bottleneck_block(f"layer{stage}.{b}", cin, width, stride, expansion))
            else:
                stage_blocks.append(basic_block(f"layer{stage}.{b}", cin, width, stride))
            cin = width * expansion
        layers.append(Group(f"layer{stage}", tuple(stage_blocks)))
    layers += [GlobalAvgPool(), Linear("fc", cin, num_classes)]
    return ModelSpec(name, tuple(layers), in_channels, image_size, num_classes, capture_points=("stem", "layer1", "layer2", "layer3"))


@register_model("resnet18", "ResNet-18, CIFAR variant (mike7seven/CIFAR-10)", origin="mike7seven/CIFAR-10",
                recipes={"default": "resnet18-adamw", "onecycle": "resnet18-onecycle",
                         "cifar100/onecycle": "resnet18-onecycle-cifar100"})
def resnet18(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return imagenet_style_resnet("resnet18", (2, 2, 2, 2), in_channels, image_size, num_classes)


@register_model("resnet34", "ResNet-34, CIFAR variant (3x3 stem, no max-pool; torchvision names)", origin="menzHSE/torch-cifar-10-cnn")
def resnet34(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return imagenet_style_resnet("resnet34", (3, 4, 6, 3), in_channels, image_size, num_classes)


@register_model("resnet50", "ResNet-50, CIFAR variant (bottlenecks; 3x3 stem, no max-pool; torchvision names)",
                origin="menzHSE/torch-cifar-10-cnn")
def resnet50(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return imagenet_style_resnet("resnet50", (3, 4, 6, 3), in_channels, image_size, num_classes, bottleneck=True)


# torchvision's ImageNet ResNets, parameter for parameter (state-dict keys are the canonical names):
# what menzHSE's `--finetune resnet18|34|50` trained, at 224 px from ImageNet weights (--pretrained).

@register_model("resnet18-imagenet", "ResNet-18, torchvision's ImageNet model (7x7 stem + max-pool; --pretrained)",
                origin="menzHSE/torch-cifar-10-cnn", recipes={"default": "finetune-resnet18"})
def resnet18_imagenet(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return imagenet_style_resnet("resnet18-imagenet", (2, 2, 2, 2), in_channels, image_size, num_classes, imagenet_stem=True)


@register_model("resnet34-imagenet", "ResNet-34, torchvision's ImageNet model (7x7 stem + max-pool; --pretrained)",
                origin="menzHSE/torch-cifar-10-cnn", recipes={"default": "finetune-resnet34"})
def resnet34_imagenet(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return imagenet_style_resnet("resnet34-imagenet", (3, 4, 6, 3), in_channels, image_size, num_classes, imagenet_stem=True)


@register_model("resnet50-imagenet", "ResNet-50, torchvision's ImageNet model (bottlenecks, 7x7 stem; --pretrained)",
                origin="menzHSE/torch-cifar-10-cnn", recipes={"default": "finetune-resnet50"})
def resnet50_imagenet(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return imagenet_style_resnet("resnet50-imagenet", (3, 4, 6, 3), in_channels, image_size, num_classes,
                                 bottleneck=True, imagenet_stem=True)
