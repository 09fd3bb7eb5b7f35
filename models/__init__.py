"""Backbones and classifiers trained from scratch (no pretrained weights are downloaded).

Names load on first use: the backbone registry needs no Avalanche import.
"""

from .. import _lazy_exports

_EXPORTS = {
    "BACKBONES": ".backbones",
    "create_backbone": ".backbones",
    "default_backbone_for": ".backbones",
    "list_backbones": ".backbones",
    "FSCILNet": ".classifier",
    "MASK_VALUE": ".classifier",
    "MultiViewFusionHead": ".fusion",
    "FUSIONS": ".fusion",
    "Conv4": ".conv4",
    "ResNet12": ".resnet",
    "ResNet18": ".resnet",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
