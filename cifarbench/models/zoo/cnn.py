"""The small residual CNN of mlx-cifar-10-cnn (573,194 parameters on CIFAR-10)."""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.spec import BatchNorm, Conv, Dropout, Flatten, Group, Linear, MaxPool, ModelSpec, ReLU, Residual


def _block(idx: int, cin: int, cout: int, slope: float) -> Group:
    """a = ReLU(BN(conv3x3(x))); out = ReLU(BN(conv3x3(a))) + conv1x1(a); pool; dropout.

    The seed author puts the ReLU before the add, uses a learned 1x1 skip even when shapes
    match, and has no ReLU after the sum; kept as is so the parameter count and behaviour match.
    """
    first, second = 2 * idx - 1, 2 * idx
    return Group(
        f"block{idx}",
        (
            Conv(f"conv{first}", cin, cout, 3, pad=1),
            BatchNorm(f"bn{first}", cout),
            ReLU(slope),
            Residual(
                f"res{idx}",
                body=(Conv(f"conv{second}", cout, cout, 3, pad=1), BatchNorm(f"bn{second}", cout), ReLU(slope)),
                shortcut=(Conv(f"skip{second}", cout, cout, 1),),
                relu_after=False,
            ),
            MaxPool(2, 2),
            Dropout(0.25),
        ),
    )


def small_cnn(in_channels: int, image_size: int, num_classes: int, slope: float = 0.0, name: str = "cnn") -> ModelSpec:
    side = image_size // 8
    return ModelSpec(
        name=name,
        layers=(
            _block(1, in_channels, 32, slope),
            _block(2, 32, 64, slope),
            _block(3, 64, 128, slope),
            Flatten(),
            Linear("fc1", 128 * side * side, 128),
            ReLU(),
            Linear("fc2", 128, num_classes),
        ),
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        capture_points=("block1", "block2", "block3", "res3"),
    )


@register_model("cnn", "small residual CNN, 3 conv blocks (mlx-cifar-10-cnn)", origin="menzHSE/mlx-cifar-10-cnn",
                recipes={"default": "cnn-adamw", "cifar100": "cnn-adamw-cifar100"})
def cnn(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return small_cnn(in_channels, image_size, num_classes)
