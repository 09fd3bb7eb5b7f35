"""CLIP strategies: zero-shot, CoOp, VPT and GRAM over a frozen open_clip model.

Each brings its own model (a :class:`~avalanche_fscl.models.PromptedCLIP` over
``load_clip(clip_model, clip_checkpoint)``), optimizer (SGD over the prompts only) and
schedule; the class-name classifier grows with each session's ``class_names``. The stream's
normalised images are mapped back to pixels and into the CLIP's own input (size, mean/std).

==================  ==============================================  ===============================
strategy            prompts                                         GRAM
==================  ==============================================  ===============================
``zeroshot_clip``   none (CLIP's zero-shot classifier, 0 epochs)     no
``coop``            CoOp text context                               no
``vpt``             VPT visual tokens                               no
``gram_coop``       CoOp text context                               init + regulator (``meta_checkpoint``)
``gram_vpt``        VPT visual tokens                               init + regulator
``unigram``         both                                            init + regulator
==================  ==============================================  ===============================

``clip_checkpoint`` defaults to ``"fscl"``: the project's kept checkpoint of ``clip_model``;
``"fscl:<variant>"`` names another kept one (see ``load_clip``). The GRAM strategies need ``meta_checkpoint`` (``avalanche-fscl
meta-train-gram``) of the same CLIP and prompt kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from ..models.amp import check_autocast
from .registry import register_variant
from .spec import StrategyContext, StrategySpec
from .template import SessionSchedule

__all__ = ["CLIPPrompt", "PROMPTS", "StreamToCLIP"]

PROMPTS = ("none", "coop", "vpt", "unigram")


class StreamToCLIP:
    """Undo a stream's ``ToFloatNormalize`` (``x * std + mean`` -> pixels in [0, 1]) and apply
    the CLIP's own transform; for streams without a known normalisation, inputs are taken as
    pixels in [0, 1]."""

    def __init__(self, stream_transform: Any, clip_transform: Any):
        mean, std = getattr(stream_transform, "mean", None), getattr(stream_transform, "std", None)
        self.mean = None if mean is None else mean.view(1, -1, 1, 1).float()
        self.std = None if std is None else std.view(1, -1, 1, 1).float()
        self.clip_transform = clip_transform

    def __call__(self, x: Tensor) -> Tensor:
        if self.mean is not None and x.dtype != torch.uint8:
            x = (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)
        return self.clip_transform(x)


class CLIPPrompt(StrategySpec):
    """Prompt tuning over a frozen CLIP (open_clip); the registered variants fix ``prompt`` and ``gram``.

    Args:
        clip_model / clip_checkpoint: ``load_clip`` arguments (``"fscl"``: the kept checkpoint, ``"fscl:<variant>"``: another kept one).
        prompt: ``none``, ``coop``, ``vpt`` or ``unigram``.
        n_ctx, ctx_init, class_specific: CoOp context (``ctx_init`` words set ``n_ctx``; ``None``:
            ``n_ctx`` random vectors); n_vpt, vpt_deep: VPT tokens.
        gram: attach :class:`~avalanche_fscl.plugins.GRAMPlugin` with ``meta_checkpoint``.
        regulate: with ``gram``, regulate gradients (off: meta-learned init only, an ablation).
        lr, momentum: SGD on the prompts; base_epochs, novel_epochs: per-session epochs.
        clip_grad: clip the prompt gradient to this global L2 norm (after GRAM's regulator);
            ``None`` (default): no clipping.
        autocast: ``None``, ``"bf16"`` or ``"fp16"`` mixed precision inside the model.
        templates: ``"photo"`` (``a photo of a {c}.``) or ``"imagenet"`` (CLIP's 80) for zero-shot.
    """

    def __init__(self, clip_model: str = "fscl-vit-p8-64", clip_checkpoint: str | None = "fscl", prompt: str = "coop",
                 n_ctx: int = 4, ctx_init: str | None = "a photo of a", class_specific: bool = False, n_vpt: int = 4,
                 vpt_deep: bool = False, gram: bool = False, meta_checkpoint: str | None = None, regulate: bool = True,
                 lr: float = 0.002, momentum: float = 0.9, base_epochs: int = 1, novel_epochs: int = 10,
                 autocast: str | None = None, templates: str = "photo", seed: int = 0, clip_grad: float | None = None):
        super().__init__()
        if prompt not in PROMPTS:
            raise ValueError(f"prompt={prompt!r}; allowed: {', '.join(PROMPTS)}")
        if prompt in ("coop", "unigram") and ctx_init is None and int(n_ctx) < 1:
            raise ValueError(f"n_ctx={n_ctx!r} must be >= 1")
        if prompt in ("vpt", "unigram") and int(n_vpt) < 1:
            raise ValueError(f"n_vpt={n_vpt!r} must be >= 1")
        check_autocast(autocast)
        if templates not in ("photo", "imagenet"):
            raise ValueError(f"templates={templates!r}; allowed: 'photo', 'imagenet'")
        if clip_grad is not None and not clip_grad > 0:
            raise ValueError(f"clip_grad={clip_grad!r}: must be > 0 (or None for no clipping)")
        if gram and not meta_checkpoint:
            raise ValueError("gram=True needs meta_checkpoint (a gram.pt from `avalanche-fscl meta-train-gram`)")
        if gram and prompt == "none":
            raise ValueError("gram=True needs prompts (prompt='coop', 'vpt' or 'unigram')")
        from ..models.clip import list_clip_models

        if clip_model not in list_clip_models():
            raise ValueError(f"clip_model={clip_model!r}; allowed: {', '.join(list_clip_models())}")
        self.clip_model, self.clip_checkpoint, self.prompt = clip_model, clip_checkpoint, prompt
        self.n_ctx, self.ctx_init, self.class_specific = n_ctx, ctx_init, class_specific
        self.n_vpt, self.vpt_deep = n_vpt, vpt_deep
        self.gram, self.meta_checkpoint, self.regulate = gram, meta_checkpoint, regulate
        self.lr, self.momentum, self.clip_grad = lr, momentum, clip_grad
        self.base_epochs, self.novel_epochs = base_epochs, novel_epochs
        self.autocast, self.templates, self.seed = autocast, templates, seed

    def check(self, ctx: StrategyContext) -> None:
        if not ctx.scenario.class_names:
            raise ValueError(f"{self.name or 'coop'}: the stream {ctx.config.stream.name!r} has no class names; CLIP strategies need them")
        if self.meta_checkpoint:
            from ..models.gram import load_gram_checkpoint

            if not Path(self.meta_checkpoint).is_file():
                raise ValueError(f"meta_checkpoint={self.meta_checkpoint!r}: no such file (make one with avalanche-fscl meta-train-gram)")
            ck = load_gram_checkpoint(self.meta_checkpoint)
            if ck["clip_model"] != self.clip_model or ck.get("prompt") != self.prompt:
                raise ValueError(
                    f"meta_checkpoint={self.meta_checkpoint!r} was meta-trained for {ck['clip_model']!r} with "
                    f"prompt={ck.get('prompt')!r}; this strategy uses {self.clip_model!r} with prompt={self.prompt!r}")

    def build_model(self, ctx: StrategyContext) -> nn.Module:
        from ..models.clip import clip_image_transform, load_clip
        from ..models.prompts import PromptedCLIP
        from ..streams.captions import clip_templates

        self.check(ctx)
        torch.manual_seed(ctx.seed)
        clip, _, tokenizer = load_clip(self.clip_model, self.clip_checkpoint, device=ctx.device)
        templates = ("a photo of a {c}.",) if self.templates == "photo" else clip_templates("imagenet1k", ctx.config.data_root)
        return PromptedCLIP(
            clip, tokenizer, text_prompt=self.prompt in ("coop", "unigram"), n_ctx=self.n_ctx, ctx_init=self.ctx_init,
            class_specific=self.class_specific, visual_prompt=self.prompt in ("vpt", "unigram"), n_vpt=self.n_vpt,
            vpt_deep=self.vpt_deep, templates=templates, autocast=self.autocast, seed=ctx.seed,
            input_transform=StreamToCLIP(getattr(ctx.scenario, "eval_transform", None), clip_image_transform(clip)),
        )

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(model.prompt_parameters())

    def make_optimizer(self, model: nn.Module, ctx: StrategyContext) -> torch.optim.Optimizer:
        params = self.trainable_parameters(model)
        # zero-shot has nothing to train: a placeholder keeps the strategy's optimizer contract
        return torch.optim.SGD(params or [nn.Parameter(torch.zeros(0))], lr=self.lr, momentum=self.momentum)

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        if self.prompt == "none":
            return base.replace(base_epochs=0, novel_epochs=0)
        return base.replace(base_epochs=self.base_epochs, base_lr=self.lr, novel_epochs=self.novel_epochs, novel_lr=self.lr)

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        from ..plugins.gram import GRAMPlugin

        names = dict(enumerate(ctx.scenario.class_names or []))
        if self.gram:
            return [GRAMPlugin(self.meta_checkpoint, regulate=self.regulate, class_names=names, clip_grad=self.clip_grad)]
        # grows the class names (identity regulator) and clips, if asked
        return [GRAMPlugin(None, class_names=names, clip_grad=self.clip_grad)]


register_variant(CLIPPrompt, "zeroshot_clip", "Zero-shot CLIP (open_clip): class-name text embeddings, nothing trained.",
                 prompt="none", gram=False)
register_variant(CLIPPrompt, "coop", "CoOp: learned text context over a frozen CLIP (open_clip); class names grow per session.",
                 prompt="coop", gram=False)
register_variant(CLIPPrompt, "vpt", "VPT: learned visual prompt tokens over a frozen CLIP (open_clip).", prompt="vpt", gram=False)
register_variant(CLIPPrompt, "gram_coop", "GRAM-CoOp (Li et al. 2023): meta-learned text-context init + gradient regulator.",
                 prompt="coop", gram=True)
register_variant(CLIPPrompt, "gram_vpt", "GRAM-VPT: meta-learned visual-prompt init + gradient regulator.",
                 prompt="vpt", gram=True)
register_variant(CLIPPrompt, "unigram", "UNIGRAM: GRAM with text and visual prompts together.", prompt="unigram", gram=True)
