"""Every registered architecture; importing this package registers them all."""

from cifarbench.models.zoo import cifar_resnet, cnn, cvet, definfo, lenet, menz, resnet  # noqa: F401
