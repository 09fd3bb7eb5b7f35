"""GRAM meta-training: a prompt initialisation and a gradient regulator from image-text pairs.

    ckpt = meta_train_gram(GRAMMetaConfig(clip_model="fscl-vit-p8-64", clip_checkpoint="clip.pt",
                                          prompt="coop"), output="runs/gram/coop")
    avalanche-fscl meta-train-gram --clip-checkpoint clip.pt --prompt unigram --output runs/gram/unigram

What follows the paper (Li et al., ICCV 2023) [paper / 2nd-hand]: tasks come from a two-level
clustering of an unlabeled image-text corpus (captions into topics, then each topic's images
into visual domains); a task's support and query sets come from different domains of one
topic; the inner loop adapts the prompt with the *regulated* gradient, the outer loop updates
the prompt initialisation and the regulator from the query loss.

What is ours: topics are k-means clusters (faiss) of the corpus' caption embeddings (one per
concept: the mean over its captions' CLIP text embeddings), domains are k-means clusters of
the CLIP image embeddings inside a topic; a task is ``ways`` concepts of one topic that have
``shots`` images in a support domain and ``queries`` in another (optionally the query also holds
``query_new`` concepts of the topic that are absent from the support set, so the outer loss
also rewards adaptation that keeps unseen classes recognisable: the base-to-new criterion);
the task loss is the prompted
classifier's cross-entropy over the task's concept names (captions as class names), the
quantity downstream prompt tuning minimises. First-order by default: the support gradient is
treated as a constant, but the query loss still differentiates through the regulator
(``P' = P - lr * psi(g)``), so the regulator learns; ``first_order=False`` keeps the graph of
``g`` (second order). Adam on the initialisation and on the regulator, gradient-norm clipping.

The corpus must not contain downstream test images: :func:`caption_corpus` never includes
Tiny ImageNet val / shot-pool images nor CIFAR-10 test images; ``tiny_classes`` can further
keep new classes out (the base-to-new benchmark meta-trains on its base classes only).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..benchmarks.machine import restores_torch_threads
from .amp import check_autocast
from .prompts import PromptedCLIP
from .regulator import REGULATOR_MODES, GradientRegulator

__all__ = [
    "PROMPT_KINDS",
    "GRAMMetaConfig",
    "GRAMTaskSampler",
    "meta_train_gram",
    "load_gram_checkpoint",
    "build_regulator",
    "prompt_flags",
    "meta_config_overrides",
]

PROMPT_KINDS = ("coop", "vpt", "unigram")


def prompt_flags(kind: str, n_ctx: int = 4, ctx_init: str | None = None, n_vpt: int = 4,
                 vpt_deep: bool = False) -> dict[str, Any]:
    """:class:`PromptedCLIP` keyword arguments of a prompt kind (``coop``: text, ``vpt``: visual,
    ``unigram``: both)."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt={kind!r}; allowed: {', '.join(PROMPT_KINDS)}")
    return {"text_prompt": kind in ("coop", "unigram"), "n_ctx": n_ctx, "ctx_init": ctx_init,
            "visual_prompt": kind in ("vpt", "unigram"), "n_vpt": n_vpt, "vpt_deep": vpt_deep}


@dataclass
class GRAMMetaConfig:
    """Meta-training settings (units in brackets).

    clip_model / clip_checkpoint: the frozen CLIP (``load_clip`` arguments; ``clip_checkpoint=None`` is a
        randomly initialised CLIP, as in ``load_clip``: pass ``"fscl"`` for the kept weights, the CLIs' default).
    prompt: ``coop``, ``vpt`` or ``unigram``; n_ctx, ctx_init, n_vpt, vpt_deep: the prompts.
    regulator: ``affine`` or ``gated``; regulator_hidden: its hidden width.
    sources / tiny_classes: the corpus (``caption_corpus``); tiny_classes ``None`` = all.
    topics, domains: k-means clusters of captions, then of each topic's images.
    ways, shots, queries: concepts per task, support and query images per concept.
    query_new: extra query-only concepts per task (ours; 0 = the paper's same-concept query).
    episodes: outer steps; meta_batch: tasks per outer step.
    inner_steps, inner_lr: inner loop (SGD on the regulated gradient; match the downstream lr).
    inner_lr_visual: inner lr of the visual prompt tokens (ours; ignored by ``coop``); ``None``
        (default): ``inner_lr``. Five inner steps move the support loss ~4x less through the visual
        tokens than through the text context at the same lr (kept ViT CLIP), so UNIGRAM's two prompt
        kinds may need two inner lrs (validation summary, "GRAM's meta settings per prompt kind").
    inner_clip_grad: clip the regulated inner-loop gradient to this global L2 norm (ours; match a
        downstream ``clip_grad``); ``None`` (default): no clipping.
    first_order: treat the support gradient as a constant (default) or keep its graph (second order;
        attention then runs on the math kernel, the fused ones having no double backward).
    outer_lr, regulator_lr: Adam learning rates; clip_grad: max grad norm of each.
    autocast: ``None`` (fp32), ``"bf16"`` or ``"fp16"``: the CLIP towers' forward passes under
        ``torch.autocast`` (prompts, regulator and logits stay fp32), as ``PromptedCLIP``'s.
    threads: CPU threads (0 = torch's default); checkpoint_minutes: wall minutes between checkpoints.
    """

    clip_model: str = "fscl-vit-p8-64"
    clip_checkpoint: str | None = None
    prompt: str = "coop"
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    n_vpt: int = 4
    vpt_deep: bool = False
    regulator: str = "affine"
    regulator_hidden: int = 32
    sources: list[str] = field(default_factory=lambda: ["tiny_imagenet", "cifar10", "image_text_pairs"])
    tiny_classes: list[int] | None = None
    topics: int = 8
    domains: int = 3
    ways: int = 5
    shots: int = 4
    queries: int = 8
    query_new: int = 0
    episodes: int = 300
    meta_batch: int = 4
    inner_steps: int = 1
    inner_lr: float = 0.002
    inner_lr_visual: float | None = None
    inner_clip_grad: float | None = None
    first_order: bool = True
    outer_lr: float = 1e-3
    regulator_lr: float = 1e-3
    clip_grad: float = 1.0
    seed: int = 0
    autocast: str | None = None
    threads: int = 0
    checkpoint_minutes: float = 5.0

    def __post_init__(self) -> None:
        prompt_flags(self.prompt)
        if self.regulator not in REGULATOR_MODES:
            raise ValueError(f"regulator={self.regulator!r}; allowed: {', '.join(REGULATOR_MODES)}")
        for name in ("n_ctx", "n_vpt", "topics", "domains", "ways", "shots", "queries", "episodes", "meta_batch",
                     "inner_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        if self.domains < 2:
            raise ValueError(f"domains={self.domains!r} must be >= 2 (support and query come from different domains)")
        if self.ways < 2:
            raise ValueError(f"ways={self.ways!r} must be >= 2")
        if self.query_new < 0:
            raise ValueError(f"query_new={self.query_new!r} must be >= 0")
        check_autocast(self.autocast)
        for name in ("inner_lr", "inner_lr_visual"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        if self.inner_clip_grad is not None and not self.inner_clip_grad > 0:
            raise ValueError(f"inner_clip_grad={self.inner_clip_grad!r} must be > 0 (or None for no clipping)")


def meta_config_overrides(items: Sequence[str], where: str = "meta-train-gram") -> dict[str, Any]:
    """``["inner_steps=5", "inner_lr=0.1"]`` -> ``{"inner_steps": 5, "inner_lr": 0.1}`` (YAML values);
    unknown :class:`GRAMMetaConfig` fields are an error that lists the allowed ones."""
    import yaml

    fields = set(GRAMMetaConfig.__dataclass_fields__)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"{where}: {item!r} is not KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        out[key] = yaml.safe_load(value)
    return out


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids ``(N,)`` of rows of ``x`` (cosine k-means, faiss)."""
    import faiss

    x = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0]


class GRAMTaskSampler:
    """Tasks from a two-level clustering of an image-caption corpus.

    Args:
        concept_text: ``(C, D)`` caption embeddings, one per concept.
        image_feats: ``(N, D)`` image embeddings; concept: ``(N,)`` concept of each image.
        topics, domains, ways, shots, queries, query_new, seed: see :class:`GRAMMetaConfig`.

    ``sample(g)`` -> ``(support_idx, support_y, query_idx, query_y, concepts)``: image indices,
    task-local labels and the task's concept ids; support and query come from two different
    domains of one topic. The support holds ``concepts[:ways]`` (labels ``0..ways-1``); the
    query holds them and up to ``query_new`` more of the topic (labels ``ways..``), as many as
    the query domain has with ``queries`` images.
    """

    def __init__(self, concept_text: np.ndarray, image_feats: np.ndarray, concept: np.ndarray, *, topics: int,
                 domains: int, ways: int, shots: int, queries: int, query_new: int = 0, seed: int = 0):
        self.ways, self.shots, self.queries, self.query_new = ways, shots, queries, query_new
        topic_of_concept = _kmeans(concept_text, topics, seed)
        self.domain = np.zeros(len(concept), dtype=np.int64)
        self.pools: list[dict[int, dict[int, np.ndarray]]] = []  # per topic: domain -> concept -> image idx
        for t in range(int(topic_of_concept.max()) + 1):
            members = np.flatnonzero(topic_of_concept[concept] == t)
            if len(members) < domains:
                continue
            self.domain[members] = _kmeans(image_feats[members], domains, seed + 1 + t)
            pool: dict[int, dict[int, np.ndarray]] = {}
            for d in np.unique(self.domain[members]):
                idx = members[self.domain[members] == d]
                pool[int(d)] = {int(c): idx[concept[idx] == c] for c in np.unique(concept[idx])}
            self.pools.append(pool)
        self.topic_of_concept = topic_of_concept
        # (topic, support domain, query domain) triples with enough concepts
        self.triples = []
        for ti, pool in enumerate(self.pools):
            for a in pool:
                for b in pool:
                    if a != b and len(self._eligible(pool, a, b)) >= ways:
                        self.triples.append((ti, a, b))
        if not self.triples:
            raise ValueError(
                f"GRAMTaskSampler: no topic has two domains with {ways} concepts of >= {shots} support and "
                f">= {queries} query images; lower ways/shots/queries or domains")

    def _eligible(self, pool, a: int, b: int) -> list[int]:
        return [c for c in pool[a] if len(pool[a][c]) >= self.shots and c in pool[b] and len(pool[b][c]) >= self.queries]

    def sample(self, g: np.random.Generator):
        ti, a, b = self.triples[g.integers(len(self.triples))]
        pool = self.pools[ti]
        concepts = [int(c) for c in g.choice(self._eligible(pool, a, b), self.ways, replace=False)]
        if self.query_new:
            rest = [c for c in pool[b] if c not in concepts and len(pool[b][c]) >= self.queries]
            if rest:
                concepts += [int(c) for c in g.choice(rest, min(self.query_new, len(rest)), replace=False)]
        s_idx = [g.choice(pool[a][c], self.shots, replace=False) for c in concepts[: self.ways]]
        q_idx = [g.choice(pool[b][c], self.queries, replace=False) for c in concepts]
        ys = np.repeat(np.arange(self.ways), self.shots)
        yq = np.repeat(np.arange(len(concepts)), self.queries)
        return np.concatenate(s_idx), ys, np.concatenate(q_idx), yq, concepts


def _task_logits(net: PromptedCLIP, x: Tensor, names: Sequence[str], prompts: Mapping[str, Tensor],
                 zero_shot: Tensor | None) -> Tensor:
    with net.amp():
        img = net.image_features(x, prompts.get("vpt"))
        txt = net.encode_prompted_text(prompts["ctx"], names) if net.text_prompt else zero_shot
    return net.clip.logit_scale.exp().float() * img.float() @ txt.float().T


def _attention_kernels(first_order: bool):
    """The attention kernels meta-training may use: any for first order; for second order only the
    math kernel, since the fused (flash) kernels have no double backward (an error on CPU)."""
    if first_order:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


@torch.no_grad()
def _embed_corpus(net: PromptedCLIP, corpus, transform, device, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    clip = net.clip
    feats = [clip.encode_image(transform(corpus.images[i : i + batch].to(device)), normalize=True).float().cpu()
             for i in range(0, len(corpus), batch)]
    text = []
    for caps in corpus.captions:  # one caption embedding per concept: the mean over up to 8 of its captions
        caps = caps[:: max(1, len(caps) // 8)][:8]
        text.append(F.normalize(clip.encode_text(net.tokenizer(caps).to(device), normalize=True).float().mean(0), dim=0).cpu())
    text = torch.stack(text)
    return text.numpy(), torch.cat(feats).numpy()


@restores_torch_threads
def meta_train_gram(
    config: GRAMMetaConfig,
    output: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
    corpus=None,
    max_episodes: int | None = None,
) -> Path:
    """Meta-train (or resume, from ``output/last.pt``) and write ``output/gram.pt``: the prompt
    initialisation and the regulator (:func:`load_gram_checkpoint` reads it). Returns its path.

    ``corpus`` (a :class:`~avalanche_fscl.streams.captions.CaptionCorpus`) replaces the one
    built from ``config.sources`` (e.g. in tests). ``max_episodes`` stops after that many
    episodes in total and returns ``output/last.pt`` (resumable; no ``gram.pt`` yet)."""
    from tqdm import tqdm

    from ..benchmarks.io import load_torch, save_torch, write_json
    from ..streams.captions import caption_corpus
    from .clip import clip_image_transform, encode_class_names, load_clip

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # a CLIP without checkpoint is initialised from it
    clip, _, tokenizer = load_clip(config.clip_model, config.clip_checkpoint, device=device)
    flags = prompt_flags(config.prompt, config.n_ctx, config.ctx_init, config.n_vpt, config.vpt_deep)
    net = PromptedCLIP(clip, tokenizer, seed=config.seed, autocast=config.autocast, **flags).to(device)
    transform = clip_image_transform(clip)
    if corpus is None:
        corpus = caption_corpus(data_root, config.sources, tiny_classes=config.tiny_classes)
    t0 = time.monotonic()
    text_emb, img_emb = _embed_corpus(net, corpus, transform, device)
    sampler = GRAMTaskSampler(text_emb, img_emb, corpus.concept.numpy(), topics=config.topics,
                              domains=config.domains, ways=config.ways, shots=config.shots,
                              queries=config.queries, query_new=config.query_new, seed=config.seed)
    setup_s = time.monotonic() - t0  # corpus embedding + clustering
    zero_shot = None
    if not net.text_prompt:  # VPT alone: the class embeddings are CLIP's zero-shot ones
        zero_shot = torch.cat([encode_class_names(clip, tokenizer, [n], ("a photo of a {c}.",))
                               for n in corpus.concept_names])
    widths = {n: p.shape[-1] for n, p in net.named_prompt_parameters()}
    reg = GradientRegulator(widths, mode=config.regulator, hidden=config.regulator_hidden).to(device)
    init = net.prompt_parameters()
    opt_p = torch.optim.Adam(init, lr=config.outer_lr)
    opt_r = torch.optim.Adam(reg.parameters(), lr=config.regulator_lr)
    state = {"step": 0, "elapsed_s": 0.0, "history": []}
    last = out / "last.pt"
    cfg_plain = asdict(config)
    if last.exists():
        ck = load_torch(last)
        if {**asdict(GRAMMetaConfig()), **ck["config"]} != cfg_plain:  # fields added since: their defaults
            raise ValueError(f"meta-train-gram: {last} was written with other settings; use another --output")
        net.load_prompt_state(ck["prompts"])
        reg.load_state_dict(ck["regulator"])
        opt_p.load_state_dict(ck["opt_p"])
        opt_r.load_state_dict(ck["opt_r"])
        state = ck["state"]
        print(f"meta-train-gram: resuming {out} at episode {state['step']}/{config.episodes}", file=sys.stderr)

    def save(path: Path, final: bool = False) -> None:
        ck = {"clip_model": config.clip_model, "prompt": config.prompt, "prompt_flags": flags,
              "prompts": net.prompt_state(), "regulator_config": reg.config(),
              "regulator": {k: v.detach().cpu() for k, v in reg.state_dict().items()}, "config": cfg_plain,
              "state": state}
        if not final:
            ck |= {"opt_p": opt_p.state_dict(), "opt_r": opt_r.state_dict()}
        save_torch(path, ck)

    names_all = corpus.concept_names
    visual_lr = config.inner_lr if config.inner_lr_visual is None else config.inner_lr_visual
    inner_lrs = {n: visual_lr if n == "vpt" else config.inner_lr for n in widths}
    t_ckpt, t_run, start = time.monotonic(), time.monotonic(), state["elapsed_s"]
    bar = tqdm(total=config.episodes, initial=state["step"], disable=not progress, desc=f"meta-train-gram {config.prompt}")
    ema = None
    stop = config.episodes if max_episodes is None else min(config.episodes, max_episodes)
    while state["step"] < stop:
        g = np.random.default_rng([config.seed, state["step"]])
        opt_p.zero_grad(set_to_none=True)
        opt_r.zero_grad(set_to_none=True)
        gain = 0.0
        for _ in range(config.meta_batch):
            with _attention_kernels(config.first_order):
                s_idx, ys, q_idx, yq, concepts = sampler.sample(g)
                names = [names_all[c] for c in concepts]
                zs = zero_shot[concepts].to(device) if zero_shot is not None else None
                xs = transform(corpus.images[torch.from_numpy(s_idx)].to(device))
                xq = transform(corpus.images[torch.from_numpy(q_idx)].to(device))
                ys_t, yq_t = torch.from_numpy(ys).to(device), torch.from_numpy(yq).to(device)
                fast = dict(net.named_prompt_parameters())
                with torch.no_grad():
                    before = F.cross_entropy(_task_logits(net, xq, names, fast, zs), yq_t).item()
                n_sup = config.ways  # the support's classes come first
                for _ in range(config.inner_steps):
                    loss_s = F.cross_entropy(_task_logits(net, xs, names[:n_sup], fast, None if zs is None else zs[:n_sup]), ys_t)
                    grads = torch.autograd.grad(loss_s, list(fast.values()), create_graph=not config.first_order)
                    upd = [reg(n, gr.detach() if config.first_order else gr) for n, gr in zip(fast, grads)]
                    if config.inner_clip_grad is not None:  # as clip_grad_norm_ downstream, kept differentiable
                        norm = torch.sqrt(sum(u.pow(2).sum() for u in upd))
                        scale = (config.inner_clip_grad / (norm + 1e-6)).clamp(max=1.0)
                        upd = [u * scale for u in upd]
                    fast = {n: w - inner_lrs[n] * u for (n, w), u in zip(fast.items(), upd)}
                loss_q = F.cross_entropy(_task_logits(net, xq, names, fast, zs), yq_t)
                (loss_q / config.meta_batch).backward()
                gain += (before - loss_q.item()) / config.meta_batch
        torch.nn.utils.clip_grad_norm_(init, config.clip_grad)
        torch.nn.utils.clip_grad_norm_(reg.parameters(), config.clip_grad)
        opt_p.step()
        opt_r.step()
        state["step"] += 1
        state["elapsed_s"] = start + time.monotonic() - t_run
        ema = gain if ema is None else 0.95 * ema + 0.05 * gain
        bar.update(1)
        bar.set_postfix(adapt_gain=f"{ema:.4f}", refresh=False)
        if state["step"] % 25 == 0:
            state["history"].append({"episode": state["step"], "query_loss_drop": round(ema, 5)})
        if time.monotonic() - t_ckpt >= config.checkpoint_minutes * 60:
            save(last)
            t_ckpt = time.monotonic()
    bar.close()
    save(last)
    if state["step"] < config.episodes:
        return last
    final = out / "gram.pt"
    save(final, final=True)
    write_json(out / "summary.json", {"config": cfg_plain, "episodes": state["step"],
                                      "wall_minutes": round(state["elapsed_s"] / 60, 2),
                                      "setup_minutes": round(setup_s / 60, 2),
                                      "tasks": {"triples": len(sampler.triples), "concepts": len(names_all)},
                                      "history": state["history"]})
    return final


def load_gram_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``gram.pt``: ``clip_model``, ``prompt``, ``prompt_flags``, ``prompts`` (tensors),
    ``regulator_config`` and ``regulator`` (state dict). Errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"meta_checkpoint={str(path)!r}: no such file (make one with avalanche-fscl meta-train-gram)")
    ck = torch.load(p, map_location="cpu", weights_only=True)
    need = {"clip_model", "prompts", "regulator_config", "regulator"}
    if not isinstance(ck, dict) or not need <= set(ck):
        raise ValueError(f"meta_checkpoint={str(path)!r} is not a GRAM checkpoint (needs {sorted(need)})")
    return ck


def build_regulator(ck: Mapping[str, Any]) -> GradientRegulator:
    """The regulator stored in a GRAM checkpoint."""
    reg = GradientRegulator(**ck["regulator_config"])
    reg.load_state_dict(ck["regulator"])
    return reg
