"""Prompt learning over a frozen open_clip model: CoOp text context, VPT visual tokens, or both.

    model, _, tokenizer = load_clip("ViT-B-32")
    net = PromptedCLIP(model, tokenizer, text_prompt=True, n_ctx=4, visual_prompt=True, vpt_deep=True)
    net.add_classes({0: "goldfish", 1: "tabby cat"})
    logits = net(images)                                  # (N, n_labels): unseen labels masked

Only the prompt tensors (:meth:`PromptedCLIP.prompt_parameters`) have ``requires_grad``; the
CLIP weights are frozen and the CLIP stays in eval mode (no dropout, no patch dropout), so
gradients reach the prompts only.

- Text (CoOp, Zhou et al. 2022): the class prompt is ``[SOS] ctx_1..ctx_M name . [EOS]``; the
  ``M = n_ctx`` context vectors are learned, shared by all classes (``class_specific=False``) or
  one set per class. ``ctx_init`` (e.g. ``"a photo of a"``) sets ``M`` to its token count and
  starts the vectors at those words' embeddings. open_clip's text transformer is batch-first;
  the causal mask is sliced to the sequence; features are pooled at the EOT token.
- Visual (VPT, Jia et al. 2022): ``n_vpt`` tokens appended after the patch embedding (and
  open_clip's ``ln_pre``); ``vpt_deep`` replaces them with fresh learned tokens before every
  block. They are dropped before open_clip's own pooling and projection. Needs a ViT tower.
- Without text prompts the class embeddings are CLIP's zero-shot ones (``templates`` averaged).

Labels are the stream's class ids: :meth:`add_classes` registers ``{id: name}``; logits cover
ids ``0..max id`` with ids never registered set to ``MASK_VALUE``.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche.models import DynamicModule

from .amp import autocast_context, check_autocast
from .classifier import MASK_VALUE
from .clip import FEATURE_CACHE, FeatureCache

__all__ = ["PromptedCLIP"]


class PromptedCLIP(DynamicModule):
    """A frozen open_clip ``CLIP`` plus learnable text and/or visual prompts.

    Args:
        clip: an open_clip ``CLIP`` (``load_clip``'s model); frozen here.
        tokenizer: its tokenizer (``load_clip``'s).
        class_names: initial ``{class id: name}`` or a list (ids ``0..n-1``).
        text_prompt: learn CoOp context vectors.
        n_ctx: number of context vectors (>= 1; ignored when ``ctx_init`` is given).
        ctx_init: words whose token embeddings initialise the context (default: N(0, 0.02)).
        class_specific: one context per class (CoOp's CSC) instead of one shared context.
        visual_prompt: learn VPT tokens (ViT image towers only).
        n_vpt: number of visual prompt tokens (>= 1).
        vpt_deep: a separate set of tokens before every transformer block (VPT-deep).
        templates: zero-shot prompts (``{c}`` = name) for the class embeddings when
            ``text_prompt`` is off.
        input_transform: applied to images first (e.g. ``clip_image_transform(clip)``);
            default identity (inputs already CLIP-normalised at the model's size).
        autocast: ``None`` (the CLIP's own dtype), ``"bf16"`` or ``"fp16"``: run the towers
            under ``torch.autocast`` on the model's device (prompts and logits stay fp32).
        seed: initialisation of the prompts.
        feature_cache: without visual prompts the image features are those of the frozen
            tower: a :class:`~avalanche_fscl.models.clip.FeatureCache` reuses them for inputs
            seen before (the process-wide one by default; ``None``: compute every time).
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Callable,
        class_names: Mapping[int, str] | Sequence[str] = (),
        *,
        text_prompt: bool = True,
        n_ctx: int = 4,
        ctx_init: str | None = None,
        class_specific: bool = False,
        visual_prompt: bool = False,
        n_vpt: int = 4,
        vpt_deep: bool = False,
        templates: Sequence[str] = ("a photo of a {c}.",),
        input_transform: Callable[[Tensor], Tensor] | None = None,
        autocast: str | None = None,
        seed: int = 0,
        feature_cache: FeatureCache | None = FEATURE_CACHE,
    ):
        super().__init__()
        if text_prompt and ctx_init is None and int(n_ctx) < 1:
            raise ValueError(f"PromptedCLIP: n_ctx={n_ctx!r} must be >= 1")
        if visual_prompt and int(n_vpt) < 1:
            raise ValueError(f"PromptedCLIP: n_vpt={n_vpt!r} must be >= 1")
        if not templates:
            raise ValueError("PromptedCLIP: templates is empty")
        self.autocast = check_autocast(autocast, "PromptedCLIP: autocast")
        if visual_prompt and not hasattr(clip.visual, "transformer"):
            raise ValueError(
                f"PromptedCLIP: visual_prompt=True needs a ViT image tower; {type(clip.visual).__name__} has no transformer")
        self.clip = clip.eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_prompt, self.class_specific = bool(text_prompt), bool(class_specific)
        self.visual_prompt, self.vpt_deep = bool(visual_prompt), bool(vpt_deep)
        self.templates = list(templates)
        self.input_transform = input_transform
        self.feature_cache = feature_cache
        self.names: dict[int, str] = {}
        g = torch.Generator().manual_seed(seed)
        dev = clip.token_embedding.weight.device
        width = clip.token_embedding.weight.shape[1]
        self.ctx_init = ctx_init
        self.n_ctx = int(n_ctx)
        self._init_ctx: Tensor | None = None
        if text_prompt:
            if ctx_init:
                tok = tokenizer([ctx_init])[0]
                n = int(tok.argmax()) - 1  # tokens between SOS and EOT
                if n < 1:
                    raise ValueError(f"PromptedCLIP: ctx_init={ctx_init!r} has no tokens")
                self.n_ctx = n
                with torch.no_grad():
                    self._init_ctx = clip.token_embedding(tok[1 : 1 + n].to(dev)).float().cpu()
            init = self._init_ctx if self._init_ctx is not None else torch.randn(self.n_ctx, width, generator=g) * 0.02
            # class-specific contexts: one row per class (class_ids order), each starting at init
            self.register_buffer("ctx_seed", init.clone().to(dev), persistent=False)
            self.ctx = nn.Parameter(init.clone().to(dev)[None, :0] if class_specific else init.clone().to(dev))
        if visual_prompt:
            v = clip.visual
            vw = v.conv1.out_channels
            depth = len(v.transformer.resblocks) if vpt_deep else 1
            # VPT's uniform init with the patch-embedding fan-in
            fan = vw * 1
            bound = (6.0 / (3 * (v.conv1.kernel_size[0] ** 2) + fan)) ** 0.5
            self.vpt = nn.Parameter((torch.rand(depth, int(n_vpt), vw, generator=g) * 2 - 1).mul(bound).to(dev))
        self._text_cache: Tensor | None = None
        self._ctx_ids: list[int] = []
        self.add_classes(class_names)

    # ------------------------------------------------------------------ classes
    @property
    def n_labels(self) -> int:
        """Width of the logits: ``max class id + 1`` (0 before any class)."""
        return max(self.names) + 1 if self.names else 0

    def add_classes(self, class_names: Mapping[int, str] | Sequence[str]) -> list[int]:
        """Register ``{class id: name}`` (a list means ids ``0..n-1``); returns the new ids.
        Known ids must keep their name; empty names are refused."""
        items = dict(enumerate(class_names)) if not isinstance(class_names, Mapping) else dict(class_names)
        new = []
        for cid, name in sorted(items.items()):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"PromptedCLIP.add_classes: class {cid} has an empty name")
            if cid < 0:
                raise ValueError(f"PromptedCLIP.add_classes: class id {cid} < 0")
            if cid in self.names:
                if self.names[cid] != name:
                    raise ValueError(f"PromptedCLIP.add_classes: class {cid} is {self.names[cid]!r}, not {name!r}")
                continue
            self.names[cid] = name
            new.append(cid)
        if new and self.text_prompt and self.class_specific:
            rows = dict(zip(self._ctx_ids, self.ctx.detach())) if self.ctx.shape[0] else {}
            rows.update({c: self.ctx_seed for c in new})
            self._ctx_ids = sorted(rows)
            self.ctx = nn.Parameter(torch.stack([rows[c] for c in self._ctx_ids]))
        self._text_cache = None
        return new

    def adaptation(self, experience) -> None:
        """Avalanche's model adaptation: register the experience's ``class_names``
        (``{id: name}``, as our FSCIL streams give) before its optimizer is built."""
        names = getattr(experience, "class_names", None)
        if names:
            self.add_classes(names)

    def class_ids(self) -> list[int]:
        return sorted(self.names)

    # ------------------------------------------------------------------ parameters
    def named_prompt_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, tensor)`` of every learnable prompt (the parameters outside ``clip``), in
        ``named_parameters`` order, without walking the frozen CLIP: its hundreds of tensors
        cost about 0.1 ms of host time per pass, which a GPU step of a few ms notices."""
        yield from self.named_parameters(recurse=False)
        for name, child in self.named_children():
            if name != "clip":
                yield from child.named_parameters(prefix=name)

    def prompt_parameters(self) -> list[nn.Parameter]:
        """The learnable prompt tensors (what an optimizer should get)."""
        return [p for _, p in self.named_prompt_parameters()]

    def prompt_state(self) -> dict[str, Tensor]:
        """Prompt tensors only (CPU copies), e.g. a meta-learned initialisation."""
        return {n: p.detach().cpu().clone() for n, p in self.named_prompt_parameters()}

    def load_prompt_state(self, state: Mapping[str, Tensor]) -> None:
        """Load :meth:`prompt_state`; a class-specific ``ctx`` of another size is an error."""
        own = dict(self.named_prompt_parameters())
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(f"PromptedCLIP.load_prompt_state: missing {missing}")
        with torch.no_grad():
            for n, v in state.items():
                if n not in own:
                    raise ValueError(f"PromptedCLIP.load_prompt_state: unexpected {n!r}; expected {sorted(own)}")
                if own[n].shape != v.shape:
                    raise ValueError(f"PromptedCLIP.load_prompt_state: {n} has shape {tuple(v.shape)}, expected {tuple(own[n].shape)}")
                own[n].copy_(v)
        self._text_cache = None

    def get_extra_state(self) -> dict:
        return {"names": {int(k): v for k, v in self.names.items()}, "ctx_ids": list(self._ctx_ids)}

    def set_extra_state(self, state: dict) -> None:
        self.names = {int(k): v for k, v in state["names"].items()}
        self._ctx_ids = list(state["ctx_ids"])
        self._text_cache = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a class-specific context has one row per class: take the saved number of rows
        key = prefix + "ctx"
        if self.text_prompt and self.class_specific and key in state_dict and state_dict[key].shape != self.ctx.shape:
            self.ctx = nn.Parameter(torch.empty_like(state_dict[key], device=self.ctx.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True) -> "PromptedCLIP":
        super().train(mode)
        self.clip.eval()  # frozen: never dropout / patch dropout
        self._text_cache = None
        return self

    # ------------------------------------------------------------------ towers
    def encode_prompted_text(self, ctx: Tensor, names: Sequence[str]) -> Tensor:
        """CoOp text features ``(C, D)`` of ``names`` with context ``(M, W)`` or ``(C, M, W)``."""
        c = self.clip
        m = self.n_ctx
        tokens = self.tokenizer([" ".join(["X"] * m) + " " + n + "." for n in names]).to(ctx.device)
        cast = c.transformer.get_cast_dtype()
        x = c.token_embedding(tokens).to(cast)
        ctx = ctx.to(cast)
        ctx = ctx[None].expand(len(names), -1, -1) if ctx.dim() == 2 else ctx
        x = torch.cat([x[:, :1], ctx, x[:, 1 + m :]], 1)
        x = x + c.positional_embedding.to(cast)
        mask = c.attn_mask
        x = c.transformer(x, attn_mask=mask[: x.shape[1], : x.shape[1]] if mask is not None else None)
        x = c.ln_final(x)
        x = x[torch.arange(len(names), device=x.device), tokens.argmax(-1)]  # EOT token
        proj = c.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else (x @ proj if proj is not None else x)
        return F.normalize(x.float(), dim=-1)

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        """Class embeddings ``(C, D)`` (normalised), rows in :meth:`class_ids` order; ``ctx``
        replaces the learned context (functional use, e.g. GRAM's inner loop)."""
        if not self.names:
            raise ValueError("PromptedCLIP: no classes yet (call add_classes)")
        if ctx is None and self._text_cache is not None:
            return self._text_cache
        names = [self.names[i] for i in self.class_ids()]
        if self.text_prompt:
            out = self.encode_prompted_text(self.ctx if ctx is None else ctx, names)
            cacheable = ctx is None and not self.training and not torch.is_grad_enabled()
        else:
            from .clip import encode_class_names

            out, cacheable = encode_class_names(self.clip, self.tokenizer, names, self.templates), ctx is None
        if cacheable:  # fixed until the prompts change (train(), add_classes, load_prompt_state)
            self._text_cache = out.detach()
        return out

    def image_features(self, x: Tensor, vpt: Tensor | None = None) -> Tensor:
        """Normalised image features ``(N, D)`` of images ``(N, 3, S, S)``; ``vpt`` replaces
        the learned visual prompts (functional use)."""
        if self.input_transform is not None:
            x = self.input_transform(x)
        v = self.clip.visual
        if not self.visual_prompt:
            if self.feature_cache is None:
                return F.normalize(self.clip.encode_image(x).float(), dim=-1)
            with torch.no_grad():  # the frozen tower: no graph needed
                return self.feature_cache.features(v, x, lambda z: F.normalize(v(z).float(), dim=-1))
        x = v._embeds(x)
        n = self.vpt.shape[1]
        p = (self.vpt if vpt is None else vpt).to(x.dtype)
        x = torch.cat([x, p[0][None].expand(len(x), -1, -1)], 1)
        tr = v.transformer
        if not getattr(tr, "batch_first", True):
            x = x.transpose(0, 1)
        for i, blk in enumerate(tr.resblocks):
            if i > 0 and self.vpt_deep:
                pi = p[i][None].expand(x.shape[0] if tr.batch_first else x.shape[1], -1, -1)
                x = torch.cat([x[:, :-n], pi], 1) if tr.batch_first else torch.cat([x[:-n], pi.transpose(0, 1)], 0)
            x = blk(x)
        if not getattr(tr, "batch_first", True):
            x = x.transpose(0, 1)
        pooled, _ = v._pool(x[:, :-n])
        if v.proj is not None:
            pooled = pooled @ v.proj
        return F.normalize(pooled.float(), dim=-1)

    def logits_from(self, img: Tensor, txt: Tensor) -> Tensor:
        """``logit_scale * cos`` scattered to label positions ``(N, n_labels)``, unseen masked."""
        ids = self.class_ids()
        scores = self.clip.logit_scale.exp().float() * img @ txt.T
        if ids == list(range(len(ids))):
            return scores
        out = scores.new_full((len(img), self.n_labels), MASK_VALUE)
        out[:, torch.tensor(ids, device=out.device)] = scores
        return out

    def amp(self):
        """The autocast context of :attr:`autocast` (a no-op when ``None``)."""
        return autocast_context(self.clip.logit_scale.device, self.autocast)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, n_labels)`` of images ``(N, 3, S, S)``."""
        with self.amp():
            img, txt = self.image_features(x), self.text_features()
        return self.logits_from(img.float(), txt.float())
