"""Backbone registry: ``create_backbone("resnet12", in_channels=3)`` and friends.

Every backbone maps ``(B, C, H, W)`` images to ``(B, out_dim)`` features and exposes
``out_dim``, so any of them plugs into :class:`~avalanche_fscl.models.FSCILNet`.
Configurations are data (:data:`CONFIGS`); :data:`BACKBONES` holds ready-made constructors.

The ``*_small`` entries halve the widths (32-64-128-256): CPU-friendly variants for smoke
runs, tests and laptops, not for reproducing published numbers.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from torch import nn

from .conv4 import Conv4
from .resnet import ResNet12, ResNet18

__all__ = ["BACKBONES", "CONFIGS", "create_backbone", "list_backbones", "default_backbone_for"]

SMALL = (32, 64, 128, 256)

# name -> (class, default kwargs, one-line description)
CONFIGS: dict[str, tuple[type[nn.Module], dict[str, Any], str]] = {
    "conv4": (Conv4, {"hidden": 64}, "Conv4, 64 channels per block (Omniglot / digits, <= 32 px)"),
    "conv4_small": (Conv4, {"hidden": 32}, "Conv4, 32 channels per block (CPU-friendly)"),
    "resnet12": (ResNet12, {"widths": (64, 160, 320, 640)}, "ResNet-12 64-160-320-640, ~12.4M params (64/84 px)"),
    "resnet12_small": (ResNet12, {"widths": SMALL}, "ResNet-12 32-64-128-256 (CPU-friendly variant)"),
    "resnet18": (ResNet18, {"widths": (64, 128, 256, 512), "stem": "cifar"}, "ResNet-18, stem by argument (default cifar)"),
    "resnet18_cifar": (ResNet18, {"stem": "cifar"}, "ResNet-18, 3x3 stride-1 stem, ~11.2M params (32 px)"),
    "resnet18_imagenet": (ResNet18, {"stem": "imagenet"}, "ResNet-18, 7x7 stride-2 stem + max-pool (>= 84 px)"),
    "resnet18_small": (ResNet18, {"widths": SMALL, "stem": "cifar"}, "ResNet-18 32-64-128-256, cifar stem (CPU-friendly variant)"),
}

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    name: functools.partial(cls, **kwargs) for name, (cls, kwargs, _) in CONFIGS.items()
}


def list_backbones() -> dict[str, str]:
    """Registered names -> one-line descriptions."""
    return {name: desc for name, (_, _, desc) in CONFIGS.items()}


def create_backbone(name: str, in_channels: int = 3, **overrides: Any) -> nn.Module:
    """Build the backbone ``name`` for ``in_channels``-channel images.

    ``overrides`` replace the registered keyword arguments (e.g. ``widths=(16, 32, 64, 128)``,
    ``drop_rate=0.1``, ``stem="imagenet"``). Unknown names raise ``ValueError``, keyword
    arguments the class does not take raise ``TypeError``; both messages list what is allowed.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(CONFIGS)}")
    cls, kwargs, _ = CONFIGS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p != "in_channels"]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"{name}: unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return cls(in_channels=in_channels, **{**kwargs, **overrides})


def default_backbone_for(image_size: int, in_channels: int) -> str:
    """The registry name to use for square ``image_size`` images with ``in_channels`` channels.

    Rule (first match wins):

    * ``in_channels != 3`` and ``image_size <= 32`` -> ``"conv4"`` (Omniglot, digits, MNIST-like);
    * ``image_size <= 32``  -> ``"resnet18_cifar"`` (CIFAR-100 FSCIL, the CEC/FACT convention);
    * ``image_size < 128``  -> ``"resnet12"`` (64 px tiered/mini, 84 px miniImageNet, CUB at 84);
    * otherwise            -> ``"resnet18_imagenet"`` (CUB-200 / ImageNet at 128-224 px).

    Larger grayscale images follow the size rules (the ResNets take any ``in_channels``).
    """
    if image_size < 1 or in_channels < 1:
        raise ValueError(f"image_size and in_channels must be >= 1, got {image_size}, {in_channels}")
    if in_channels != 3 and image_size <= 32:
        return "conv4"
    if image_size <= 32:
        return "resnet18_cifar"
    if image_size < 128:
        return "resnet12"
    return "resnet18_imagenet"
