"""mikecvet/cnn's CNN: three 5x5 'same' convs (20/50/100 channels) and three linear layers.

The original's head is kept as written in ``cvet-cnn``: linear1 -> Dropout ->
ReLU; linear2 -> Dropout with no activation; linear3 -> Dropout on the logits. Dropout on the
logits makes train-mode accuracy meaningless and the missing activation makes linear2/linear3
one linear map, so ``cvet-cnn-fixed`` offers the repaired head with the same parameters.
The original ends in LogSoftmax + NLLLoss, which equals softmax cross-entropy on these logits.
"""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.shapes import flat_features
from cifarbench.models.spec import Conv, Dropout, Flatten, Group, Layer, Linear, MaxPool, ModelSpec, ReLU

DROPOUT = 0.3


def cvet_spec(name: str, in_channels: int, image_size: int, num_classes: int, faithful: bool) -> ModelSpec:
    features: tuple[Layer, ...] = tuple(
        Group(f"block{i}", (Conv(f"conv{i}", cin, cout, 5, pad=2), ReLU(), MaxPool(2, 2)))
        for i, (cin, cout) in enumerate(((in_channels, 20), (20, 50), (50, 100)), start=1)
    )
    fc = flat_features(features, in_channels, image_size)  # (size // 8)^2 * 100
    if faithful:
        head: tuple[Layer, ...] = (
            Linear("linear1", fc, fc // 2), Dropout(DROPOUT), ReLU(),
            Linear("linear2", fc // 2, fc // 4), Dropout(DROPOUT),
            Linear("linear3", fc // 4, num_classes), Dropout(DROPOUT),
        )
    else:
        head = (
            Linear("linear1", fc, fc // 2), ReLU(), Dropout(DROPOUT),
            Linear("linear2", fc // 2, fc // 4), ReLU(), Dropout(DROPOUT),
            Linear("linear3", fc // 4, num_classes),
        )
    return ModelSpec(name, features + (Flatten(),) + head, in_channels, image_size, num_classes,
                     capture_points=("block1", "block2", "block3"))


@register_model("cvet-cnn", "mikecvet/cnn CNN as written (dropout on the logits, no ReLU after linear2)",
                origin="mikecvet/cnn", recipes={"default": "cvet-cnn-mnist", "mnist": "cvet-cnn-mnist",
                                                "cifar10": "cvet-cnn-cifar10", "cifar100": "cvet-cnn-cifar100"})
def cvet_cnn(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return cvet_spec("cvet-cnn", in_channels, image_size, num_classes, faithful=True)


@register_model("cvet-cnn-fixed", "mikecvet/cnn CNN, repaired head (ReLU after linear2, no dropout on the logits)",
                origin="mikecvet/cnn")
def cvet_cnn_fixed(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return cvet_spec("cvet-cnn-fixed", in_channels, image_size, num_classes, faithful=False)
