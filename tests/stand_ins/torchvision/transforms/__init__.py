"""Stand-in for torchvision.transforms: timm subclasses ToTensor at import time."""

from .._placeholder import placeholder_class

ToTensor = placeholder_class(__name__, "ToTensor")
