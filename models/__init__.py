"""Backbones and classifiers trained from scratch (no pretrained weights are downloaded), and
open_clip models with prompt learners and GRAM's regulator (``load_clip``, ``PromptedCLIP``, ...).

Names load on first use: the backbone registry needs no Avalanche import.
"""

from .. import _lazy_exports

_EXPORTS = {
    "BACKBONES": ".backbones",
    "create_backbone": ".backbones",
    "default_backbone_for": ".backbones",
    "list_backbones": ".backbones",
    "AUTOCAST_DTYPES": ".amp",
    "autocast_context": ".amp",
    "check_autocast": ".amp",
    "fastest_autocast": ".amp",
    "FSCILNet": ".classifier",
    "MASK_VALUE": ".classifier",
    "MultiViewFusionHead": ".fusion",
    "FUSIONS": ".fusion",
    "Conv4": ".conv4",
    "ResNet12": ".resnet",
    "ResNet18": ".resnet",
    "load_clip": ".clip",
    "list_clip_models": ".clip",
    "project_clip_models": ".clip",
    "clip_image_transform": ".clip",
    "encode_class_names": ".clip",
    "save_clip_checkpoint": ".clip",
    "CLIPImageEncoder": ".clip",
    "FeatureCache": ".clip",
    "PromptedCLIP": ".prompts",
    "GradientRegulator": ".regulator",
    "GRAMMetaConfig": ".gram",
    "meta_train_gram": ".gram",
    "load_gram_checkpoint": ".gram",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
