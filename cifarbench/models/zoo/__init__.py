"""Every registered architecture; importing this package registers them all."""

from cifarbench.models.zoo import cifar_resnet, cnn, cvet, definfo, lenet, menz, resnet  # noqa: F401
from cifarbench.models.zoo import speedrun  # noqa: F401
