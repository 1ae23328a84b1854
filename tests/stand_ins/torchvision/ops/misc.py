"""Stand-in for torchvision.ops.misc: timm imports FrozenBatchNorm2d for its batch-norm
freezing helpers."""

from .._placeholder import placeholder_class

FrozenBatchNorm2d = placeholder_class(__name__, "FrozenBatchNorm2d")
