"""Placeholders for torchvision names (see ../README.md): importable, never usable."""

import enum


class StandInError(RuntimeError):
    """A torchvision stand-in was used; the real torchvision is not installed."""


def placeholder_class(module, name):
    """A class named ``name`` that raises :class:`StandInError` when instantiated (timm
    subclasses some of these at import time, so they must be real classes)."""

    def refuse(self, *args, **kwargs):
        raise StandInError(
            f"{module}.{name} is a test stand-in (tests/stand_ins): the real torchvision "
            "is not installed"
        )

    return type(name, (), {"__module__": module, "__init__": refuse})


class InterpolationMode(enum.Enum):
    """The member names timm reads from torchvision's InterpolationMode when it builds its
    lookup tables at import time; their values are torchvision's strings."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
