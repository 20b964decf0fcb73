"""``speedrun``: the fast-CIFAR-10 network described in Keller Jordan's airbench94 paper
("94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024) and tysam-code's hlb-cifar10,
written here from those descriptions.

Layout: a frozen 2x2 patch-whitening conv (no padding; its 2 * 4 * C filters are the
eigenvectors of the training patches' covariance, both signs, set from the data by
``cifarbench.engine.whiten``; its bias trains) and GELU; three blocks of widths 64/256/256,
each conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (bias-free convs, dirac
init); max-pool 3 (global on the 3x3 map left at 28 and 32 px); a bias-free linear head whose
logits are multiplied by 1/9. BN scales are frozen at 1 (only the shifts train), eps 1e-12,
and the running statistics move fast: the papers' "momentum 0.6" is the weight of the old
value, i.e. 0.4 in PyTorch's convention used here.
"""

from __future__ import annotations

from cifarbench.models.registry import register_model
from cifarbench.models.shapes import walk
from cifarbench.models.spec import GELU, BatchNorm, Conv, Flatten, Group, Linear, MaxPool, ModelSpec, Scale

WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.4  # torch convention (new = 0.6 * old + 0.4 * batch)
BN_EPS = 1e-12
LOGIT_SCALE = 1 / 9


def _bn(name: str, ch: int) -> BatchNorm:
    return BatchNorm(name, ch, eps=BN_EPS, momentum=BN_MOMENTUM, trainable_weight=False)


def _block(idx: int, cin: int, cout: int) -> Group:
    name = f"block{idx}"
    return Group(name, (
        Conv(f"{name}.conv1", cin, cout, 3, pad=1, bias=False, init="dirac"),
        MaxPool(2, 2),
        _bn(f"{name}.bn1", cout),
        GELU(),
        Conv(f"{name}.conv2", cout, cout, 3, pad=1, bias=False, init="dirac"),
        _bn(f"{name}.bn2", cout),
        GELU(),
    ))


def speedrun_spec(in_channels: int, image_size: int, num_classes: int, *, name: str = "speedrun",
                  logit_scale: float = LOGIT_SCALE) -> ModelSpec:
    white = 2 * in_channels * 2 * 2  # every 2x2xC patch direction, with both signs
    layers = [Group("whiten", (Conv("whiten.conv", in_channels, white, 2, bias=True, trainable_weight=False, init="whiten"),
                               GELU()))]
    cin = white
    for i, width in enumerate(WIDTHS, start=1):
        layers.append(_block(i, cin, width))
        cin = width
    # The papers' max-pool 3 covers the whole 3x3 map left at 28 and 32 px; sizing the window
    # to the map keeps it global at other sizes (16 px leaves 1x1).
    side = walk(layers, (in_channels, image_size, image_size))[1]
    layers += [MaxPool(side, side), Flatten(), Linear("head", cin, num_classes, bias=False), Scale(logit_scale)]
    return ModelSpec(name, tuple(layers), in_channels, image_size, num_classes,
                     capture_points=("whiten", "block1", "block2", "block3"))


@register_model("speedrun", "airbench94-style fast net: frozen patch-whitening conv, 3 GELU blocks 64/256/256, "
                "frozen-scale BN (after Keller Jordan's airbench94 and hlb-cifar10)", recipes={"default": "speedrun"})
def speedrun(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    return speedrun_spec(in_channels, image_size, num_classes)


@register_model("speedrun-muon", "the speedrun net with the Muon record's head: logits divided by the 256 features "
                "instead of 9 (after Keller Jordan's airbench94_muon)", recipes={"default": "speedrun-muon"})
def speedrun_muon(in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    # The record divides the head's output by its input width (256). With the engine's 1/9 the head's
    # effective step (lr x scale^2) would be (256/9)^2 = 809x the record's at its head lr of 0.67.
    return speedrun_spec(in_channels, image_size, num_classes, name="speedrun-muon", logit_scale=1 / WIDTHS[-1])
