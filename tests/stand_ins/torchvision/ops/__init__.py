"""Stand-in for torchvision.ops (see ../../README.md)."""
