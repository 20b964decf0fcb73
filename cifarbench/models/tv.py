"""``tv:NAME``: any torchvision classification model, adapted to small images (torch backend only).

The adaptation is mike7seven's for ResNet-18, applied generically: the stem's first conv
becomes a 3x3 stride-1 conv (padding 1) taking ``in_channels``, a max-pool in the stem is
removed, and the head is built for ``num_classes`` (torchvision's ``num_classes=``). These are
nn.Modules, not specs, so they exist only on the PyTorch backend. torchvision is imported
lazily: ``import cifarbench`` never needs it.
"""

from __future__ import annotations

from typing import Any

from cifarbench.errors import UsageError, unknown_name

PREFIX = "tv:"
INSTALL_HINT = "pip install 'cifarbench[torchvision]'"


def is_tv_name(name: str) -> bool:
    return name.startswith(PREFIX)


def _torchvision(name: str = "NAME") -> Any:
    try:
        import torchvision
    except ImportError:
        raise UsageError(f"tv:{name} needs the torchvision extra ({INSTALL_HINT})") from None
    return torchvision


def list_torchvision_models() -> list[str]:
    """Classification model names torchvision offers ('resnet18', 'vgg11', ...), without the prefix."""
    tv = _torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def _first_conv_and_pool(model: Any) -> tuple[tuple[Any, str, Any] | None, tuple[Any, str, Any] | None]:
    """(parent, attribute, module) of the first Conv2d, and of a MaxPool2d met before the second conv."""
    from torch import nn

    conv = pool = None
    convs_seen = 0
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                convs_seen += 1
                if conv is None:
                    conv = (parent, attr, child)
            elif isinstance(child, nn.MaxPool2d) and pool is None and convs_seen <= 1:
                pool = (parent, attr, child)
            if convs_seen > 1:
                return conv, pool
    return conv, pool


def build_torchvision_model(name: str, in_channels: int, image_size: int, num_classes: int) -> Any:
    """A freshly initialised torchvision model for ``in_channels`` x ``image_size``^2 inputs."""
    from torch import nn

    bare = name[len(PREFIX):] if is_tv_name(name) else name
    tv = _torchvision(bare)
    names = tv.models.list_models(module=tv.models)
    if bare not in names:
        raise unknown_name("torchvision model", bare, names)
    try:
        model = tv.models.get_model(bare, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"tv:{bare} cannot be built for {num_classes} classes: {exc}") from None
    conv, pool = _first_conv_and_pool(model)
    if conv is not None:
        parent, attr, old = conv
        setattr(parent, attr, nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None))
    if pool is not None:
        parent, attr, _ = pool
        setattr(parent, attr, nn.Identity())
    return model
