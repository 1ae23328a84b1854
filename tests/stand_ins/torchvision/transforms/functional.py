"""Stand-in for torchvision.transforms.functional: timm reads InterpolationMode's members
at import time."""

from .._placeholder import InterpolationMode

__all__ = ["InterpolationMode"]
