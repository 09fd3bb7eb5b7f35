"""Backbones and classifiers trained from scratch (no pretrained weights are downloaded)."""

from .backbones import BACKBONES, create_backbone, default_backbone_for, list_backbones
from .classifier import MASK_VALUE, FSCILNet
from .conv4 import Conv4
from .resnet import ResNet12, ResNet18

__all__ = [
    "BACKBONES",
    "Conv4",
    "FSCILNet",
    "MASK_VALUE",
    "ResNet12",
    "ResNet18",
    "create_backbone",
    "default_backbone_for",
    "list_backbones",
]
