"""Every registered architecture; importing this package registers them all."""

from cifarbench.models.zoo import cnn, resnet  # noqa: F401
