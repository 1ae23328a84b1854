"""Test-only stand-in for torchvision: just the names timm imports (see ../README.md)."""

__version__ = "0.0.0+stand-in"
