"""Every registered architecture; importing this package registers them all."""

# modules are named for what a model is; each registers its models under their public names
from cifarbench.models.zoo import cifar_resnet, cnn, cnn5x5, cnn_leaky, lenet, resnet, simplecnn  # noqa: F401
from cifarbench.models.zoo import speedrun  # noqa: F401
