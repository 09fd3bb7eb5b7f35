"""Backbones and classifiers trained from scratch (no pretrained weights are downloaded)."""

from .conv4 import Conv4

__all__ = ["Conv4"]
