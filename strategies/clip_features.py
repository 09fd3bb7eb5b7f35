"""Feature classifiers over a frozen CLIP image encoder: ``prototype_clip``, ``knn_clip``, ``raml_clip``.

The from-scratch strategies (``prototype``, ``knn``, ``raml``) train a backbone in the base
session; these replace it by the image tower of ``load_clip(clip_model, clip_checkpoint)``
(:class:`~avalanche_fscl.models.CLIPImageEncoder`, frozen): no supervised base training, no
gradient step on the encoder ever. The stream's normalised images are mapped back to pixels
and into the CLIP's input (as the prompt strategies do).

=====================  ==============================================================
strategy               classifier over the frozen CLIP features
=====================  ==============================================================
``prototype_clip``     class prototypes (the baseline; ``prototype`` on CLIP features)
``knn_clip``           similarity-weighted kNN vote over the stream memory
                       (class-balanced by default)
``raml_clip``          RAML: prototypes + multi-view fusion head (meta-trained at the
                       end of session 0, the encoder frozen) + kNN vote
=====================  ==============================================================

What the CLIP saw matters when reading results: the kept ``fscl-vit-p8-64`` was pretrained on
captioned Tiny ImageNet train images 0-119 of all 200 classes (see ``models/clip_weights``).
"""

from __future__ import annotations

import torch
from torch import nn

from .baselines import Prototype
from .raml import KNN, RAML
from .registry import register_strategy
from .spec import StrategyContext
from .template import SessionSchedule

__all__ = ["PrototypeCLIP", "KNNCLIP", "RAMLCLIP"]


class _FrozenCLIPEncoder:
    """Mixin: the model is ``FSCILNet(CLIPImageEncoder)``; nothing trains in any session."""

    clip_model: str
    clip_checkpoint: str | None

    def _set_clip(self, clip_model: str, clip_checkpoint: str | None) -> None:
        from ..models.clip import list_clip_models

        if clip_model not in list_clip_models():
            raise ValueError(f"clip_model={clip_model!r}; allowed: {', '.join(list_clip_models())}")
        self.clip_model, self.clip_checkpoint = clip_model, clip_checkpoint

    def build_model(self, ctx: StrategyContext) -> nn.Module:
        from ..models import FSCILNet
        from ..models.clip import CLIPImageEncoder, clip_image_transform, load_clip
        from .clip import StreamToCLIP

        torch.manual_seed(ctx.seed)
        clip, _, _ = load_clip(self.clip_model, self.clip_checkpoint, device=ctx.device)
        to_clip = StreamToCLIP(getattr(ctx.scenario, "eval_transform", None), clip_image_transform(clip))
        return FSCILNet(CLIPImageEncoder(clip, to_clip), ctx.scenario.n_classes, head="cosine", scale=ctx.config.model.scale)

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(base_epochs=0, novel_epochs=0)


@register_strategy("prototype_clip")
class PrototypeCLIP(_FrozenCLIPEncoder, Prototype):
    """Class prototypes of frozen CLIP image features (the CLIP-encoder baseline)."""

    def __init__(self, clip_model: str = "fscl-vit-p8-64", clip_checkpoint: str | None = "fscl", replace_base: bool = True):
        Prototype.__init__(self, replace_base=replace_base)
        self._set_clip(clip_model, clip_checkpoint)


@register_strategy("knn_clip")
class KNNCLIP(_FrozenCLIPEncoder, KNN):
    """Similarity-weighted kNN vote over frozen CLIP image features of the stream memory."""

    def __init__(self, clip_model: str = "fscl-vit-p8-64", clip_checkpoint: str | None = "fscl", k: int = 5,
                 balanced: bool = True, backend: str = "exact", per_class_cap: int | None = None, seed: int = 0):
        KNN.__init__(self, k=k, balanced=balanced, backend=backend, per_class_cap=per_class_cap, seed=seed)
        self._set_clip(clip_model, clip_checkpoint)


@register_strategy("raml_clip")
class RAMLCLIP(_FrozenCLIPEncoder, RAML):
    """RAML over a frozen CLIP image encoder: prototypes + fusion head + kNN vote (only the head trains)."""

    def __init__(self, clip_model: str = "fscl-vit-p8-64", clip_checkpoint: str | None = "fscl", k: int = 5,
                 fusion: str | None = "mean", heads: int = 4, prototype_weight: float = 1.0, vote_weight: float = 1.0,
                 balanced_vote: bool = True, memory: str = "stream", backend: str = "exact",
                 per_class_cap: int | None = None, meta_episodes: int = 300, meta_ways: int = 20, meta_shots: int = 5,
                 meta_queries: int = 5, head_lr: float = 1e-3, seed: int = 0):
        RAML.__init__(self, k=k, fusion=fusion, heads=heads, prototype_weight=prototype_weight, vote_weight=vote_weight,
                      balanced_vote=balanced_vote, memory=memory, backend=backend, per_class_cap=per_class_cap,
                      meta_episodes=meta_episodes, meta_ways=meta_ways, meta_shots=meta_shots,
                      meta_queries=meta_queries, head_lr=head_lr, train_encoder=False, seed=seed)
        self._set_clip(clip_model, clip_checkpoint)
