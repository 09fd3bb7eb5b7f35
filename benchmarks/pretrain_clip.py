"""``avalanche-fscl pretrain-clip``: contrastive pretraining of a small open_clip model on CPU or GPU.

    avalanche-fscl pretrain-clip --config vit_p8_64                 # runs/clip/vit_p8_64
    avalanche-fscl pretrain-clip --config vit_p8_64 --output DIR    # resumes DIR if it holds last.pt

A recipe (``benchmarks/configs/clip/NAME.yaml``, or a YAML path) names the open_clip
architecture, the corpus (:func:`avalanche_fscl.streams.captions.caption_corpus`) and the
optimisation. The run writes ``DIR/last.pt`` (model, optimizer, step, history; atomically,
every ``checkpoint_minutes``) and resumes from it exactly: data order and augmentation are
functions of ``(seed, step)``, so a stopped and resumed run takes the same steps as an
unstopped one. At the end it writes ``DIR/final.pt`` (fp16 weights, :func:`load_clip` format),
``DIR/final.sha256`` and ``DIR/summary.json`` (zero-shot top-1 on Tiny ImageNet val, 200-way,
and CIFAR-10 test, 10-way; wall time; the exact command).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.amp import fastest_autocast
from .machine import cpu_model, device_problem, machine_name, restores_torch_threads

__all__ = ["CLIPRecipe", "load_recipe", "list_recipes", "pretrain_clip", "zero_shot_accuracy", "color_augment",
           "all_concepts_loss", "fit_image_prototypes", "prototype_distillation_loss", "RECIPE_DIR"]

RECIPE_DIR = Path(__file__).with_name("configs") / "clip"
# recipe fields that do not change what is trained (a resumed run may change them)
_RUNTIME_FIELDS = ("threads", "channels_last", "checkpoint_minutes", "eval_images", "eval_minutes")


@dataclass
class CLIPRecipe:
    """One pretraining recipe (every field has a unit or an allowed set).

    model: open_clip architecture name (see ``load_clip``).
    sources: corpus parts, any of ``tiny_imagenet``, ``cifar10``, ``image_text_pairs``.
    epochs: passes over the corpus; batch_size: image-caption pairs per step.
    lr: peak AdamW learning rate (linear warmup over ``warmup_steps``, cosine to 0);
    weight_decay: on matrices only (not gains, biases, embeddings, logit scale).
    loss: ``"unicl"`` (pairs of one concept are positives) or ``"clip"`` (InfoNCE on the diagonal),
        both over the batch's own captions; ``"all_concepts"`` (ours): every step also draws one caption
        for every concept of the corpus, and each image is classified over all of them (its
        concept's caption the target), as zero-shot classification does, while each caption of a
        concept in the batch is matched to that concept's images (:func:`all_concepts_loss`). Costs
        one text-tower pass over the concepts (218 captions) per step. ``"prototypes"`` (ours, after
        ProtoCLIP's prototype-level alignment, Chen et al. 2022): only with ``lock_image``; before the
        first step the locked image tower encodes every corpus image once (plus its mirror image with
        ``flip``) and :func:`fit_image_prototypes` fits one unit vector per concept to those features
        (a cosine classifier); every step then draws one caption per concept and ``batch_size`` of
        the stored features, and the captions, as a classifier of those features, learn to give the
        prototypes' class distribution (:func:`prototype_distillation_loss`). A plain ``1 - cos``
        regression onto the prototypes was tried first: cos 0.978 and zero-shot 19% from 25%, since
        the error of every vector counts against margins between classes that are far smaller.
        No image is encoded during the steps, so ``crop_scale``, the colour fields and ``mixup`` do
        not apply; an epoch is still ``len(corpus) // batch_size`` steps.
    prototype_scale: with ``loss: prototypes``, the cosine classifier's logit scale while its rows
        are fitted and in the distillation (> 0).
    prototype_steps: full-batch momentum-SGD steps (lr 0.1) of that fit, from the class means
        (>= 0; 0 = the normalised class means themselves). The defaults, 160 and 1,600, were chosen
        on the unseen shot pool for ``fscl-rn-64-w32`` ``fscl:warm_color2`` (recipe ``rn_64_w32_prototypes``).
    prototype_label_smoothing: label smoothing of that fit, in ``[0, 1)`` (0 = off, the default;
        :func:`fit_image_prototypes`). Ours: the corpus features come from images the locked tower
        trained on and separate more sharply than unseen ones; smoothed targets keep the rows from
        fitting them that closely (0.3 chosen on the shot pool, recipe ``rn_64_w32_prototypes_ls``).
    precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (time both on the first batch, keep the faster).
        ``auto`` is decided again when a run resumes on another CPU type (``cpu_model``) or GPU, since
        bf16 is 1.9x faster on one CPU here and 16x slower on another; a fixed precision is kept, and
        changing it on resume (``--set precision=... --allow-recipe-change``) applies from that step.
    threads: torch CPU threads (0 = leave torch's default).
    channels_last: ``load_clip``'s argument (``None``: on for a convolutional image tower). A speed
        setting, like ``threads``: same training up to float rounding. On the Intel Xeon (AMX), one
        thread, a ``fscl-rn-64-w32`` step of batch 128 took 0.69 s instead of 0.85 s in bf16 (1.09 s
        instead of 1.26 s in fp32).
    crop_scale: random-resized-crop area range; flip: random horizontal flips.
    color_jitter: brightness, contrast and saturation factors uniform in ``[1 - c, 1 + c]`` per
        image (0 = off; :func:`color_augment`); grayscale_p: probability of a grey image (0 = off).
    mixup: Beta(a, a) concentration of batch mixup (0 = off): every image becomes
        ``lam * x_i + (1 - lam) * x_perm(i)`` (one ``lam`` per batch) and both directions of the
        contrastive loss take the mixed targets (:func:`contrastive_loss`). A regulariser for
        corpora with few distinct images per concept, where the model fits the seen images
        far better than new ones.
    checkpoint_minutes: wall minutes between checkpoints.
    eval_images: per-test-set images used by the periodic zero-shot check (the final one uses all).
    eval_minutes: wall minutes between periodic zero-shot checks.
    seed: data order, augmentation and initialisation.
    init: ``None`` (random initialisation) or the weights to start from, as ``load_clip``'s
        ``pretrained`` (``"fscl"`` = the kept checkpoint of ``model``, ``"fscl:<variant>"`` another
        kept one, a checkpoint path, an open_clip tag): a warm restart that continues a finished run
        with a fresh optimizer and schedule.
    lock_image: locked-image text tuning (LiT, Zhai et al. 2022, "LiT: Zero-Shot Transfer with
        Locked-image text Tuning"): the image tower is frozen (no gradient, not in the optimizer,
        BatchNorm statistics and patch dropout in eval mode) and only the text tower and the logit
        scale learn, so the class-name classifier moves to the image features the tower already has.
        Meant with ``init`` (a trained image tower); each step still encodes its augmented batch.
    """

    model: str = "fscl-vit-p8-64"
    sources: list[str] = field(default_factory=lambda: ["tiny_imagenet", "cifar10", "image_text_pairs"])
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 500
    loss: str = "unicl"
    precision: str = "auto"
    threads: int = 2
    channels_last: bool | None = None
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    color_jitter: float = 0.0
    grayscale_p: float = 0.0
    mixup: float = 0.0
    checkpoint_minutes: float = 5.0
    eval_images: int = 2000
    eval_minutes: float = 15.0
    seed: int = 0
    init: str | None = None
    lock_image: bool = False
    prototype_scale: float = 160.0
    prototype_steps: int = 1600
    prototype_label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "loss": (self.loss, ("unicl", "clip", "all_concepts", "prototypes")),
            "precision": (self.precision, ("fp32", "bf16", "auto")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"pretrain-clip recipe: {name}={value!r}; allowed: {', '.join(allowed)}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"pretrain-clip recipe: {name}={getattr(self, name)!r} must be >= 1")
        if not isinstance(self.lock_image, bool):
            raise ValueError(f"pretrain-clip recipe: lock_image={self.lock_image!r}; allowed: true, false")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"pretrain-clip recipe: channels_last={self.channels_last!r}; allowed: true, false, null (auto)")
        for name, hi in (("color_jitter", 1.0), ("grayscale_p", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise ValueError(f"pretrain-clip recipe: {name}={v!r} must be a number in [0, {hi:g}] (0 = off)")
            setattr(self, name, float(v))
        if isinstance(self.mixup, bool) or not isinstance(self.mixup, (int, float)) or not self.mixup >= 0:
            raise ValueError(f"pretrain-clip recipe: mixup={self.mixup!r} must be a number >= 0 (0 = off)")
        self.mixup = float(self.mixup)
        if self.mixup > 0 and self.loss in ("all_concepts", "prototypes"):
            raise ValueError(f"pretrain-clip recipe: mixup applies to loss unicl or clip, not {self.loss}")
        if self.loss == "prototypes" and not self.lock_image:
            raise ValueError("pretrain-clip recipe: loss=prototypes needs lock_image=true (the prototypes are "
                             "the locked image tower's features)")
        if isinstance(self.prototype_scale, bool) or not isinstance(self.prototype_scale, (int, float)) \
                or not self.prototype_scale > 0:
            raise ValueError(f"pretrain-clip recipe: prototype_scale={self.prototype_scale!r} must be a number > 0")
        self.prototype_scale = float(self.prototype_scale)
        if isinstance(self.prototype_steps, bool) or not isinstance(self.prototype_steps, int) or self.prototype_steps < 0:
            raise ValueError(f"pretrain-clip recipe: prototype_steps={self.prototype_steps!r} must be an integer >= 0")
        ls = self.prototype_label_smoothing
        if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 1:
            raise ValueError(f"pretrain-clip recipe: prototype_label_smoothing={ls!r} must be a number in [0, 1)")
        self.prototype_label_smoothing = float(ls)
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"pretrain-clip recipe: crop_scale={self.crop_scale!r} must satisfy 0 < lo <= hi <= 1")
        self.crop_scale = (float(lo), float(hi))
        from ..models.clip import kept_clip_path, names_a_file

        if isinstance(self.init, str) and (self.init == "fscl" or self.init.startswith("fscl:")):
            kept_clip_path(self.model, self.init)  # raises, listing the kept checkpoints, if there is none
        elif self.init is not None and names_a_file(self.init) and not Path(str(self.init)).expanduser().is_file():
            raise ValueError(f"pretrain-clip recipe: init={self.init!r}: no such checkpoint file; allowed: 'fscl', 'fscl:<variant>', a checkpoint path, an open_clip tag")


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str, **overrides: Any) -> CLIPRecipe:
    """A shipped recipe by name or a YAML file; unknown keys are an error naming the allowed ones."""
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"pretrain-clip: --config {name_or_path!r}: no such file or recipe; shipped: {', '.join(list_recipes())}")
    data = {**(yaml.safe_load(path.read_text()) or {}), **overrides}
    allowed = set(CLIPRecipe.__dataclass_fields__)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"pretrain-clip recipe {path}: unknown keys {unknown}; allowed: {', '.join(sorted(allowed))}")
    return CLIPRecipe(**data)


# ------------------------------------------------------------------------------ pieces


def color_augment(x: Tensor, jitter: float, gray_p: float, g: torch.Generator) -> Tensor:
    """Batched photometric augmentation of float images ``(B, 3, H, W)`` in ``[0, 1]``.

    Per image, in this order: brightness, contrast and saturation factors drawn uniformly from
    ``[1 - jitter, 1 + jitter]`` (contrast around the image's mean grey, saturation around each
    pixel's grey), clamped to ``[0, 1]``; then, with probability ``gray_p``, the image in grey
    (3 equal channels). ``jitter=0`` and ``gray_p=0`` draw nothing from ``g`` and return ``x``.
    """
    if jitter <= 0 and gray_p <= 0:
        return x
    b = x.shape[0]
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)

    def grey(t: Tensor) -> Tensor:
        return (t * weights).sum(1, keepdim=True)

    if jitter > 0:
        f = (1 + torch.empty(3, b).uniform_(-jitter, jitter, generator=g)).to(x).view(3, b, 1, 1, 1)
        x = (x * f[0]).clamp(0, 1)
        m = grey(x).mean((2, 3), keepdim=True)
        x = ((x - m) * f[1] + m).clamp(0, 1)
        gx = grey(x)
        x = ((x - gx) * f[2] + gx).clamp(0, 1)
    if gray_p > 0:
        to_grey = (torch.rand(b, generator=g) < gray_p).to(x.device).view(b, 1, 1, 1)
        x = torch.where(to_grey, grey(x).expand_as(x), x)
    return x


def random_resized_crop(x: Tensor, size: int, scale: tuple[float, float], flip: bool, g: torch.Generator) -> Tensor:
    """Batched random-resized crop (aspect 3/4-4/3) + horizontal flip of float images
    ``(B, C, H, W)`` -> ``(B, C, size, size)``, one ``roi_align`` call."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(*scale, generator=g) * h * w
    logr = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    cw = (area * logr.exp()).sqrt().clamp(max=w)
    ch = (area / logr.exp()).sqrt().clamp(max=h)
    x0 = torch.rand(b, generator=g) * (w - cw)
    y0 = torch.rand(b, generator=g) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(x, boxes.to(x), output_size=size, aligned=True, sampling_ratio=2)
    if flip:
        mirror = torch.rand(b, generator=g) < 0.5
        out = torch.where(mirror.view(b, 1, 1, 1).to(out.device), out.flip(-1), out)
    return out


def contrastive_loss(
    img: Tensor, txt: Tensor, scale: Tensor, concept: Tensor | None, mix: tuple[float, Tensor] | None = None
) -> Tensor:
    """Symmetric InfoNCE over normalised embeddings ``(B, D)``; with ``concept`` ``(B,)`` every
    pair of one concept is a positive (targets uniform over them), else only the diagonal.

    ``mix = (lam, perm)``: image ``i`` is the mixup ``lam * x_i + (1 - lam) * x_perm[i]``, so its
    positive weight on text ``j`` is ``lam * pos[i, j] + (1 - lam) * pos[perm[i], j]``; the image-to-
    text targets are these rows normalised, the text-to-image targets the columns normalised.
    """
    logits = scale * img.float() @ txt.float().T
    if concept is None and mix is None:
        target = torch.arange(len(img), device=img.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    pos = (concept[:, None] == concept[None, :]).float() if concept is not None else torch.eye(len(img), device=img.device)
    pos = pos / pos.sum(1, keepdim=True)  # per image, uniform over its positives
    i2t = t2i = pos  # pos is symmetric in distribution: row j is also text j's target over images
    if mix is not None:
        lam, perm = mix
        mixed = lam * pos + (1 - lam) * pos[perm.to(pos.device)]
        i2t, t2i = mixed, mixed.T / mixed.T.sum(1, keepdim=True)
    return (torch.sum(-i2t * logits.log_softmax(1), 1).mean() + torch.sum(-t2i * logits.T.log_softmax(1), 1).mean()) / 2


def all_concepts_loss(img: Tensor, txt: Tensor, scale: Tensor, concept: Tensor) -> Tensor:
    """Contrastive loss against every concept: normalised image embeddings ``(B, D)``, one caption
    embedding per concept ``(C, D)``, image ``i``'s concept ``concept[i]``. Image to text: cross-entropy
    over all ``C`` captions; text to image: each caption of a concept present in the batch, over the
    batch's images, its targets uniform over that concept's images. The mean of the two."""
    logits = scale * img.float() @ txt.float().T  # (B, C)
    i2t = F.cross_entropy(logits, concept)
    present = concept.unique()
    pos = (present[:, None] == concept[None, :]).float()
    t2i = torch.sum(-(pos / pos.sum(1, keepdim=True)) * logits[:, present].T.log_softmax(1), 1).mean()
    return (i2t + t2i) / 2


def prototype_distillation_loss(features: Tensor, txt: Tensor, prototypes: Tensor, scale: float) -> Tensor:
    """KL divergence from the prototypes' class distribution to the captions' on image features.

    ``features`` ``(B, D)`` normalised image embeddings, ``txt`` ``(C, D)`` one normalised caption
    embedding per concept, ``prototypes`` ``(C, D)`` (:func:`fit_image_prototypes`); both
    classifiers at logit ``scale``. Zero exactly when the captions classify every feature as the
    prototypes do; what matters is the ranking on image features, not the distance of the vectors.
    """
    teacher = (scale * features @ prototypes.T).log_softmax(1)
    student = (scale * features @ txt.T).log_softmax(1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


_FIT_CHUNK = 4096  # feature rows per chunk in fit_image_prototypes: (4096, 218) fp32 probabilities, 3.6 MB


@torch.enable_grad()
def fit_image_prototypes(
    features: Tensor, labels: Tensor, n_concepts: int, scale: float = 160.0, steps: int = 1600,
    on_step: Callable[[int, Tensor], None] | None = None, label_smoothing: float = 0.0,
) -> Tensor:
    """One unit vector per concept that classifies ``features`` by cosine: rows ``(C, D)``.

    ``features`` ``(N, D)`` are normalised image embeddings, ``labels`` ``(N,)`` their concepts in
    ``[0, n_concepts)``, each present. The rows start at the normalised class means and take
    ``steps`` full-batch steps of cross-entropy over ``scale * features @ normalize(rows).T``
    (SGD, lr 0.1, momentum 0.9); ``steps=0`` returns the normalised class means. ``on_step(k, rows)``
    is called with the normalised rows after every step ``k`` (1-based), e.g. to read a curve.
    ``label_smoothing`` ``eps`` in ``[0, 1)``: the targets are ``(1 - eps) * onehot + eps / C``, as
    ``F.cross_entropy(label_smoothing=eps)``; it keeps the rows from fitting the corpus features,
    which the image tower has seen, more sharply than unseen images separate.
    """
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or not 0 <= label_smoothing < 1:
        raise ValueError(f"fit_image_prototypes: label_smoothing={label_smoothing!r} must be a number in [0, 1)")
    if len(labels) != len(features) or int(labels.min()) < 0 or int(labels.max()) >= n_concepts:
        raise ValueError(f"fit_image_prototypes: labels must be {len(features)} concept ids in [0, {n_concepts}), "
                         f"got {len(labels)} in [{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(labels, minlength=n_concepts)
    if not bool((counts > 0).all()):
        raise ValueError(f"fit_image_prototypes: labels must cover every concept in [0, {n_concepts}); "
                         f"missing {(counts == 0).nonzero().flatten().tolist()[:10]}")
    f = features.detach().float()
    rows = F.normalize(torch.zeros(n_concepts, f.shape[1], device=f.device).index_add_(0, labels, f), dim=1)
    rows.requires_grad_(True)
    opt = torch.optim.SGD([rows], lr=0.1, momentum=0.9)
    chunks = list(zip(f.split(_FIT_CHUNK), labels.split(_FIT_CHUNK)))
    for k in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        w = F.normalize(rows, dim=1)
        grad = torch.zeros_like(w)  # d(mean cross-entropy) / d(normalised rows) = scale / N * (P - Y).T @ f
        for x, y in chunks:
            p = torch.softmax(scale * x @ w.detach().T, dim=1)
            # probabilities below 1e-30 add nothing to the gradient; left in, at scale ~100 about a
            # seventh of them are subnormal floats, which made the product 20x slower on CPU
            # (torch.set_flush_denormal reaches only the calling thread)
            p.masked_fill_(p < 1e-30, 0)
            if label_smoothing:
                p -= label_smoothing / n_concepts
            p[torch.arange(len(y), device=p.device), y] -= 1 - label_smoothing
            grad += p.T @ x
        w.backward(grad * (scale / len(f)))
        opt.step()
        if on_step is not None:
            on_step(k, F.normalize(rows.detach(), dim=1))
    return F.normalize(rows.detach(), dim=1)


@torch.no_grad()
def _corpus_features(model: nn.Module, images: Tensor, flip: bool, batch_size: int = 500) -> Tensor:
    """Normalised embeddings ``(N or 2N, D)`` of ``uint8`` corpus images (then their mirror images)."""
    from ..models.clip import clip_image_transform

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    tf = clip_image_transform(model)
    out = []
    for mirror in ([False, True] if flip else [False]):
        for i in range(0, len(images), batch_size):
            x = tf(images[i : i + batch_size].to(device))
            out.append(model.encode_image(x.flip(3) if mirror else x, normalize=True).float())
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(
    model: nn.Module,
    tokenizer,
    images: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 500,
    autocast: bool = False,
) -> float:
    """Top-1 zero-shot accuracy (%) of ``model`` on ``uint8`` images ``(N, 3, H, W)``."""
    from ..models.clip import clip_image_transform, encode_class_names

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    tf = clip_image_transform(model)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        w = encode_class_names(model, tokenizer, class_names, templates)
        correct = 0
        for i in range(0, len(images), batch_size):
            f = model.encode_image(tf(images[i : i + batch_size].to(device)), normalize=True).float()
            correct += (f @ w.T).argmax(1).eq(labels[i : i + batch_size].to(device)).sum().item()
    model.train(was)
    return 100.0 * correct / len(images)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embedding" not in n and "logit_scale" not in n else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _init_sha256(recipe: CLIPRecipe) -> str | None:
    """sha256 of the file a warm restart started from (``None`` for an open_clip tag)."""
    from ..models.clip import kept_clip_path

    path = kept_clip_path(recipe.model, recipe.init) or Path(str(recipe.init)).expanduser()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _subset(n: int, k: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(n, k)]


class _EvalSets:
    """Tiny ImageNet val (200-way, imagenet1k templates; the test split), CIFAR-10 test (cifar10
    templates) and ``tiny_imagenet_shots``: the 30 train images per class that no corpus holds
    (200-way), the validation split on which recipe settings are chosen."""

    def __init__(self, data_root) -> None:
        from ..streams.captions import cifar10_images, clip_templates, tiny_imagenet_classes, tiny_imagenet_images

        self.sets = {}
        names, templates = tiny_imagenet_classes(data_root)[0], clip_templates("imagenet1k", data_root)
        tx, ty = tiny_imagenet_images(data_root, "val")
        self.sets["tiny_imagenet_val"] = (tx, ty, names, templates)
        sx, sy = tiny_imagenet_images(data_root, "shots")
        self.sets["tiny_imagenet_shots"] = (sx, sy, names, templates)
        try:
            cx, cy, names = cifar10_images(data_root, "test")
            self.sets["cifar10_test"] = (cx, cy, names, clip_templates("cifar10", data_root))
        except FileNotFoundError:
            pass

    def __call__(self, model, tokenizer, limit: int | None, autocast: bool) -> dict[str, float]:
        out = {}
        for name, (x, y, names, templates) in self.sets.items():
            idx = _subset(len(x), limit, 0) if limit else torch.arange(len(x))
            out[name] = round(zero_shot_accuracy(model, tokenizer, x[idx], y[idx], names, templates, autocast=autocast), 2)
        return out


# ------------------------------------------------------------------------------ training


@restores_torch_threads
def pretrain_clip(
    recipe: CLIPRecipe,
    output: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    device: str = "cpu",
    max_steps: int | None = None,
    progress: bool = True,
    command: str | None = None,
    allow_recipe_change: bool = False,
) -> dict:
    """Train (or resume) ``recipe`` into ``output``; returns the summary (see the module doc).

    ``max_steps`` stops early after that many total steps (for tests and time-boxed runs); the
    run stays resumable and writes no ``final.pt``. A resumed run must have the same recipe,
    except the runtime fields (threads, checkpoint and eval timing); ``allow_recipe_change``
    continues it with changed fields (e.g. more ``epochs``: the cosine schedule then follows
    the new total), recorded in the summary's ``recipe_changes``.
    """
    from tqdm import tqdm

    from ..models.clip import clip_image_size, load_clip, save_clip_checkpoint
    from ..streams.captions import caption_corpus
    from .io import load_torch, save_torch, write_json, write_text

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_name(device)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    model, _, tokenizer = load_clip(recipe.model, pretrained=recipe.init, device=device, channels_last=recipe.channels_last)
    model.train()
    if recipe.lock_image:  # LiT: the image tower is a fixed function (see the recipe's doc)
        model.visual.requires_grad_(False)
    size = clip_image_size(model)
    corpus = caption_corpus(data_root, recipe.sources, image_size=max(size, 32))
    steps_per_epoch = len(corpus) // recipe.batch_size
    total = recipe.epochs * steps_per_epoch
    opt = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)
    state = {"step": 0, "elapsed_s": 0.0, "history": [], "precision": None}
    last = out / "last.pt"
    def plain_fields(r: CLIPRecipe) -> dict:  # as stored in last.pt (YAML/torch-safe types)
        return asdict(r) | {"crop_scale": list(r.crop_scale)}

    plain = plain_fields(recipe)
    if last.exists():
        ck = load_torch(last)
        before = plain_fields(CLIPRecipe()) | ck["recipe"]  # fields newer than the run: their defaults
        changed = {k: [before.get(k), v] for k, v in plain.items() if k not in _RUNTIME_FIELDS and before.get(k) != v}
        if changed and not allow_recipe_change:
            raise ValueError(f"pretrain-clip: {last} was written by another recipe (changed: {changed}); use another "
                             "--output, or --allow-recipe-change to continue this run with them (e.g. more epochs)")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        if changed:
            state.setdefault("recipe_changes", []).append({"step": state["step"], "changed": changed})
        if state.get("precision") and "precision_history" not in state:  # a run from before the history
            state["precision_history"] = [{"from_step": 0, "precision": state["precision"], "machine": None,
                                           "timing_s": state.get("precision_timing_s")}]
        if "precision" in changed or (recipe.precision == "auto" and state.get("precision_machine") != machine):
            state["precision"] = None  # decided again below: ``auto`` is the faster one on *this* machine
        print(f"pretrain-clip: resuming {out} at step {state['step']}/{total}", file=sys.stderr)
    targets = cached = None
    if recipe.loss == "prototypes":  # fixed for the run: stored with it, so a resumed run keeps them
        if "prototypes" not in state:
            t0 = time.monotonic()
            feats = _corpus_features(model, corpus.images, recipe.flip)
            labels = corpus.concept.repeat(len(feats) // len(corpus)).to(feats.device)
            state["prototypes"] = fit_image_prototypes(feats, labels, len(corpus.captions), recipe.prototype_scale,
                                                       recipe.prototype_steps,
                                                       label_smoothing=recipe.prototype_label_smoothing).cpu()
            state["prototype_features"] = feats.cpu()
            state["prototypes_minutes"] = round((time.monotonic() - t0) / 60, 1)  # not in wall_minutes (steps only)
        targets, cached = state["prototypes"].to(device), state["prototype_features"].to(device)
    evals = _EvalSets(data_root)

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return recipe.lr * (step + 1) / recipe.warmup_steps
        t = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * min(1.0, t)))

    def concept_captions(g: torch.Generator) -> Tensor:  # one caption per concept, in concept order
        r = torch.randint(0, 1 << 30, (len(corpus.captions),), generator=g).tolist()
        return tokenizer([caps[j % len(caps)] for caps, j in zip(corpus.captions, r)]).to(device)

    def batch(step: int) -> tuple[Tensor, Tensor, Tensor, tuple[float, Tensor] | None]:
        epoch, i = divmod(step, steps_per_epoch)
        order = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(recipe.seed * 100_003 + epoch))
        idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        x = corpus.images[idx].to(device).float() / 255.0
        x = random_resized_crop(x, size, recipe.crop_scale, recipe.flip, g)
        x = color_augment(x, recipe.color_jitter, recipe.grayscale_p, g)
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        x = (x - torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)) / torch.tensor(
            OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
        if recipe.loss == "all_concepts":
            text = concept_captions(g)
        else:
            text = tokenizer(corpus.sample_captions(idx, g)).to(device)
        mix = None
        if recipe.mixup > 0:
            import numpy as np

            lam = float(np.random.default_rng(recipe.seed * 1_000_003 + step).beta(recipe.mixup, recipe.mixup))
            perm = torch.randperm(len(x), generator=g).to(device)
            x = lam * x + (1 - lam) * x[perm]
            mix = (lam, perm)
        return x, text, corpus.concept[idx].to(device), mix

    def train_step(step: int, bf16: bool) -> float:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        if targets is not None:  # loss: prototypes (no image is encoded)
            g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
            text = concept_captions(g)
            f = cached[torch.randint(0, len(cached), (recipe.batch_size,), generator=g).to(device)]
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                txt = model.encode_text(text, normalize=True)
            loss = prototype_distillation_loss(f, txt.float(), targets, recipe.prototype_scale)
        else:
            x, text, concept, mix = batch(step)
            torch.manual_seed(recipe.seed * 7919 + step)  # patch dropout draws from the global RNG
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                if recipe.lock_image:
                    model.visual.eval()  # again each step: the periodic zero-shot check restores train mode
                with torch.set_grad_enabled(not recipe.lock_image):
                    img = model.encode_image(x, normalize=True)
                txt = model.encode_text(text, normalize=True)
            if recipe.loss == "all_concepts":
                loss = all_concepts_loss(img, txt, model.logit_scale.exp(), concept)
            else:
                loss = contrastive_loss(img, txt, model.logit_scale.exp(), concept if recipe.loss == "unicl" else None, mix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    if state["precision"] is None:
        state["precision"] = recipe.precision
        if recipe.precision == "auto":  # time both on a throwaway copy, keep the faster
            import copy

            saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
            best, times = fastest_autocast(lambda ac: train_step(0, ac == "bf16"), device=device)
            model.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
            state["precision"] = best or "fp32"
            state["precision_timing_s"] = times
            print(f"pretrain-clip: step time fp32 {times['fp32']:.3f}s, bf16 {times['bf16']:.3f}s -> {state['precision']}", file=sys.stderr)
        state["precision_machine"] = machine
        state.setdefault("precision_history", []).append(  # which steps ran in which precision, where
            {"from_step": state["step"], "precision": state["precision"], "machine": machine,
             "timing_s": state.get("precision_timing_s") if recipe.precision == "auto" else None})
    bf16 = state["precision"] == "bf16"

    def save() -> None:
        save_torch(last, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
            "recipe": plain,
        })

    stop = total if max_steps is None else min(total, max_steps)
    t_ckpt = t_eval = time.monotonic()
    t_run = time.monotonic()
    start_elapsed = state["elapsed_s"]
    bar = tqdm(total=total, initial=state["step"], disable=not progress, desc=f"pretrain-clip {recipe.model}", unit="step")
    loss_ema = None
    try:
        while state["step"] < stop:
            loss = train_step(state["step"], bf16)
            loss_ema = loss if loss_ema is None else 0.98 * loss_ema + 0.02 * loss
            state.setdefault("losses", []).append(round(loss, 4))  # per step: the training curve
            state["step"] += 1
            state["elapsed_s"] = start_elapsed + time.monotonic() - t_run
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr_at(state['step']):.2e}", refresh=False)
            now = time.monotonic()
            if now - t_eval >= recipe.eval_minutes * 60:
                acc = evals(model, tokenizer, recipe.eval_images, bf16)
                state["history"].append({"step": state["step"], "minutes": round(state["elapsed_s"] / 60, 1), "loss": round(loss_ema, 4), **acc})
                bar.write(f"pretrain-clip: {state['history'][-1]}")
                t_eval = now
            if now - t_ckpt >= recipe.checkpoint_minutes * 60:
                save()
                t_ckpt = now
    except KeyboardInterrupt:
        save()
        bar.close()
        print(f"pretrain-clip: stopped at step {state['step']}; run the same command to resume", file=sys.stderr)
        raise
    bar.close()
    save()
    summary = {"recipe": asdict(recipe), "steps": state["step"], "total_steps": total, "precision": state["precision"],
               "precision_history": state.get("precision_history", []),
               "wall_minutes": round(state["elapsed_s"] / 60, 1), "history": state["history"],
               "corpus_images": len(corpus), "threads": torch.get_num_threads(), "device": device,
               "cpu_model": cpu_model(),
               "command": command, "finished": state["step"] >= total,
               "recipe_changes": state.get("recipe_changes", [])}
    if "prototypes_minutes" in state:
        summary["prototypes_minutes"] = state["prototypes_minutes"]
    if recipe.init is not None:
        summary["init_sha256"] = _init_sha256(recipe)
    if state["step"] >= total:
        summary["zero_shot"] = evals(model, tokenizer, None, bf16)
        final = out / "final.pt"
        save_clip_checkpoint(final, model, recipe.model, storage="fp16", zero_shot=summary["zero_shot"], steps=state["step"])
        summary["final_sha256"] = hashlib.sha256(final.read_bytes()).hexdigest()
        write_text(out / "final.sha256", f"{summary['final_sha256']}  final.pt\n")
    write_json(out / "summary.json", summary)
    return summary


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain-clip", help="contrastive pretraining of a small CLIP (resumable)")
    p.add_argument("--config", default="vit_p8_64", help=f"recipe name or YAML file (shipped: {', '.join(list_recipes())})")
    p.add_argument("--output", help="run folder (default runs/clip/<config>); an existing last.pt there is resumed")
    p.add_argument("--data-root", help="folder holding tiny_imagenet/, cifar10_jpeg/, ... (default $AVALANCHE_FSCL_DATA or ../shared/data)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--max-steps", type=int, help="stop after this many total steps (resumable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field (YAML value)")
    p.add_argument("--allow-recipe-change", action="store_true",
                   help="resume a run whose recipe fields changed (e.g. --set epochs=60 to train longer)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (logs, CI)")


def run_from_args(args) -> int:
    import yaml

    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"pretrain-clip: --set {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    recipe = load_recipe(args.config, **overrides)
    why = device_problem(args.device)
    if why:
        raise ValueError(f"pretrain-clip: --device {why}")
    output = args.output or str(Path("runs") / "clip" / Path(args.config).stem)
    summary = pretrain_clip(recipe, output, args.data_root, args.device, args.max_steps,
                            command="avalanche-fscl " + shlex.join(sys.argv[1:]),
                            allow_recipe_change=args.allow_recipe_change, progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("steps", "total_steps", "wall_minutes", "finished")} | {"zero_shot": summary.get("zero_shot")}))
    return 0
