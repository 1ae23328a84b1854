"""Stand-in for torchvision.datasets: the classes timm's dataset factory imports without a
fallback (it guards the others with try/except ImportError, so they are left out)."""

from .._placeholder import placeholder_class

CIFAR10 = placeholder_class(__name__, "CIFAR10")
CIFAR100 = placeholder_class(__name__, "CIFAR100")
MNIST = placeholder_class(__name__, "MNIST")
KMNIST = placeholder_class(__name__, "KMNIST")
FashionMNIST = placeholder_class(__name__, "FashionMNIST")
ImageFolder = placeholder_class(__name__, "ImageFolder")
