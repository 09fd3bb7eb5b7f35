"""``avalanche-fscl base-to-new``: CLIP prompt tuning, base-to-new under a domain shift (CoCoOp protocol).

    avalanche-fscl base-to-new                                   # kept CLIP, 3 seeds, K = 1 4 16
    avalanche-fscl base-to-new --shots 4 --seeds 0 --methods coop gram_coop --output /tmp/b2n

Protocol (one command reproduces the table; a stopped run resumes cell by cell):
- classes: Tiny ImageNet labels 0-99 are *base*, 100-199 *new*; the CLIP saw captions of all
  200 in pretraining (``pretrain-clip``) but none of the images used here.
- shots: ``K`` images per base class from the shot pool (train images 120-149 of each class,
  never in a corpus), drawn per seed; test: Tiny ImageNet val (50 per class), base and new;
  cross-dataset: CIFAR-10 test (10 classes, prompts tuned on Tiny ImageNet base classes).
- shift: shots and test images are degraded alike (``lowres``: 4x down- then up-sampled;
  ``grayscale``; ``none``), the downstream domain the prompts must adapt to.
- methods: ``zeroshot`` (no training), ``coop``, ``vpt``, ``gram_coop``, ``gram_vpt``,
  ``unigram``; ablations ``<gram method>_noreg`` (meta-learned init, plain gradients) and
  ``<gram method>_noinit`` (plain init, regulated gradients); every trained method runs ``steps`` SGD steps (batch 32, momentum 0.9, cosine,
  random-resized-crop + flip) at ``lr``, optionally with the gradient's global norm clipped
  (``--clip-grad``; off by default and in every recorded table unless its settings say so). GRAM methods start from a meta-learned prompt and
  regulate every gradient; their meta-training (``meta-train-gram``, once per prompt kind,
  stored under ``OUTPUT/meta``) uses the corpus restricted to the base classes, so new classes'
  images and names are never seen by any prompt.
- metrics: top-1 (%) on base classes (100-way among base), new (100-way among new), harmonic
  mean, and CIFAR-10 (10-way); mean +- std over seeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .machine import restores_torch_threads

__all__ = ["METHODS", "ABLATIONS", "SHIFTS", "apply_shift", "tune_prompts", "run_base_to_new"]

METHODS = ("zeroshot", "coop", "vpt", "gram_coop", "gram_vpt", "unigram")
GRAM_METHODS = ("gram_coop", "gram_vpt", "unigram")
# ablations of each GRAM method: the meta-learned init with plain gradients, or the regulator from the plain init
ABLATIONS = tuple(f"{m}{part}" for m in GRAM_METHODS for part in ("_noreg", "_noinit"))
SHIFTS = ("lowres", "grayscale", "none")
_KIND = {"zeroshot": None, "coop": "coop", "vpt": "vpt", "gram_coop": "coop", "gram_vpt": "vpt", "unigram": "unigram"}
_KIND |= {a: _KIND[a.rsplit("_no", 1)[0]] for a in ABLATIONS}


def _is_gram(method: str) -> bool:
    return method.split("_no")[0] in GRAM_METHODS


def apply_shift(images: Tensor, shift: str) -> Tensor:
    """The downstream domain: ``uint8 (N, 3, H, W)`` -> degraded ``uint8`` images of the same size."""
    if shift not in SHIFTS:
        raise ValueError(f"shift={shift!r}; allowed: {', '.join(SHIFTS)}")
    if shift == "none":
        return images
    x = images.float() / 255.0
    if shift == "grayscale":
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand(-1, 3, -1, -1)
    else:
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(h // 4, w // 4), mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def tune_prompts(net, images: Tensor, labels: Tensor, *, steps: int, lr: float, regulator=None, batch_size: int = 32,
                 momentum: float = 0.9, seed: int = 0, clip_grad: float | None = None) -> float:
    """Prompt tuning: ``steps`` SGD steps on ``uint8`` images ``(N, 3, H, W)`` with labels (the
    net's class ids); gradients pass through ``regulator`` when given, then, with ``clip_grad``,
    are rescaled to a global L2 norm of at most ``clip_grad`` (over all prompt tensors, after
    the regulator: it bounds the update actually taken). Returns seconds/step."""
    from .pretrain_clip import random_resized_crop

    params = net.prompt_parameters()
    if not params or steps == 0:
        return 0.0
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    g = torch.Generator().manual_seed(seed)
    net.train()
    dev = next(net.parameters()).device
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=g)
        x = random_resized_crop(images[idx].float() / 255.0, images.shape[-1], (0.5, 1.0), True, g)
        loss = F.cross_entropy(net(x.to(dev)), labels[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if regulator is not None:
            regulator.regulate_(net)
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        opt.step()
    net.eval()
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def _accuracy(net, images: Tensor, labels: Tensor, class_ids: Sequence[int], batch: int = 500) -> float:
    """Top-1 (%) among ``class_ids`` only. Without visual prompts the image features come from
    the process-wide :class:`~avalanche_fscl.models.clip.FeatureCache` after the first method:
    the same batches, so the same values."""
    net.eval()
    dev = next(net.parameters()).device
    cols = torch.tensor(list(class_ids), device=dev)
    correct = 0
    for i in range(0, len(images), batch):
        logits = net(images[i : i + batch].float().div(255.0).to(dev))[:, cols]
        correct += cols[logits.argmax(1)].eq(labels[i : i + batch].to(dev)).sum().item()
    return 100.0 * correct / len(images)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path``'s folder (``.lock``): processes sharing an output serialise writes."""
    with open(path.parent / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _merge_cell(res_path: Path, results: dict, key: str) -> None:
    """Write one finished cell, keeping cells other processes wrote meanwhile (e.g. one process
    per method on the same output)."""
    from .io import write_json

    with _locked(res_path):
        if res_path.exists():
            disk = json.loads(res_path.read_text())
            results["cells"] = {**disk["cells"], key: results["cells"][key]}
        write_json(res_path, results)


def _stats(v: Sequence[float]) -> dict[str, float]:
    a = np.asarray(v, dtype=float)
    return {"mean": round(float(a.mean()), 2), "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 2), "n": len(a)}


@restores_torch_threads
def run_base_to_new(
    output: str | os.PathLike,
    *,
    clip_model: str = "fscl-vit-p8-64",
    clip_checkpoint: str | None = "fscl",
    shots: Sequence[int] = (1, 4, 16),
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = METHODS,
    shift: str = "lowres",
    steps: int = 200,
    lr: float = 0.002,
    n_ctx: int = 4,
    ctx_init: str | None = "a photo of a",
    n_vpt: int = 4,
    vpt_deep: bool = False,
    meta_episodes: int = 300,
    data_root: str | os.PathLike | None = None,
    device: str = "cpu",
    threads: int = 0,
    validation: bool = False,
    meta: Mapping[str, Any] | None = None,
    clip_grad: float | None = None,
    autocast: str | None = None,
    report_only: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every (method, K, seed) cell into ``output``; returns the results.

    ``validation=True`` is the split for choosing hyper-parameters, carved from training data
    only: base = Tiny ImageNet labels 0-49, new = 50-99; shots from the first 16 shot-pool
    images of each class, test images = the other 14; no val image, no label >= 100 and no
    CIFAR-10 image is used (GRAM meta-trains on labels 0-49 there).

    ``clip_grad`` bounds the global L2 norm of each prompt update's gradient (``None``: no
    clipping, as the recorded tables). ``autocast`` (``"bf16"``/``"fp16"``; ``None``: fp32, as the
    recorded tables) runs the CLIP towers under mixed precision, in prompt tuning and in GRAM's
    meta-training.

    ``meta`` overrides GRAM's meta-training settings (:class:`GRAMMetaConfig` fields; by default
    ``inner_lr = lr`` and ``episodes = meta_episodes``). ``report_only`` rewrites the summary
    (results.json, results.md) from the stored cells without running anything. ``progress``
    shows GRAM meta-training's progress bar (stderr)."""
    from ..models.amp import check_autocast
    from ..models.clip import clip_image_transform, load_clip
    from ..models.gram import GRAMMetaConfig, build_regulator, load_gram_checkpoint, meta_train_gram, prompt_flags
    from ..models.prompts import PromptedCLIP
    from ..streams.captions import cifar10_images, tiny_imagenet_classes, tiny_imagenet_images

    bad = [m for m in methods if m not in _KIND]
    if bad:
        raise ValueError(f"methods {bad}; allowed: {', '.join(METHODS + ABLATIONS)}")
    if any(k < 1 or k > 30 for k in shots):
        raise ValueError(f"shots={list(shots)}: each must be in 1..30 (the shot pool has 30 images per class)")
    apply_shift(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), shift)
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad={clip_grad!r}: must be > 0 (or None for no clipping)")
    check_autocast(autocast)
    meta = dict(meta or {})
    fixed = {"clip_model", "clip_checkpoint", "prompt", "n_ctx", "ctx_init", "n_vpt", "vpt_deep", "tiny_classes", "autocast"}
    bad = sorted((set(meta) - set(GRAMMetaConfig.__dataclass_fields__)) | (set(meta) & fixed))
    if bad:
        raise ValueError(f"meta={bad}: not settable here; allowed: "
                         f"{', '.join(sorted(set(GRAMMetaConfig.__dataclass_fields__) - fixed))}")
    if threads:
        torch.set_num_threads(threads)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"clip_model": clip_model, "clip_checkpoint": str(clip_checkpoint), "shift": shift, "steps": steps,
                "lr": lr, "validation": validation, "n_ctx": n_ctx, "ctx_init": ctx_init, "n_vpt": n_vpt, "vpt_deep": vpt_deep, "meta_episodes": meta_episodes}
    if meta:  # only when given, so runs recorded before this option still resume
        settings["meta"] = meta
    if clip_grad is not None:  # likewise
        settings["clip_grad"] = clip_grad
    if autocast is not None:
        settings["autocast"] = autocast
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"settings": settings, "cells": {}}
    if results["settings"] != settings:
        raise ValueError(f"base-to-new: {res_path} holds another setting {results['settings']}; use another --output")
    if report_only:
        return _write_summary(out, results, methods=methods, shots=shots, seeds=seeds, device=device, command=command, minutes=0.0)

    clip, _, tokenizer = load_clip(clip_model, clip_checkpoint, device=device)
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    names, _ = tiny_imagenet_classes(data_root)
    pool_x, pool_y = tiny_imagenet_images(data_root, "shots")
    if validation:
        base, new = list(range(50)), list(range(50, 100))
        rank = torch.zeros_like(pool_y)
        for c in range(100):
            rank[pool_y == c] = torch.arange(int((pool_y == c).sum()))
        held = (pool_y < 100) & (rank >= 16)
        val_x, val_y = pool_x[held], pool_y[held]
        keep = (pool_y < 50) & (rank < 16)
        pool_x, pool_y = pool_x[keep], pool_y[keep]
    else:
        base, new = list(range(100)), list(range(100, 200))
        val_x, val_y = tiny_imagenet_images(data_root, "val")
    pool_x, val_x = apply_shift(pool_x, shift), apply_shift(val_x, shift)
    cx = cy = cnames = None
    if not validation:
        cx, cy, cnames = cifar10_images(data_root, "test")
        cx = F.interpolate(cx.float(), size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 255).round()
        cx = apply_shift(cx.to(torch.uint8), shift)
    test_base, test_new = torch.isin(val_y, torch.tensor(base)), torch.isin(val_y, torch.tensor(new))
    to_clip = clip_image_transform(clip)

    # meta-training, once per prompt kind, on the base classes' corpus
    metas = {}
    for kind in sorted({_KIND[m] for m in methods if _is_gram(m)}):
        mdir = out / "meta" / kind
        kw = {"inner_lr": lr, "episodes": meta_episodes, "threads": threads, "autocast": autocast} | meta
        cfg = GRAMMetaConfig(clip_model=clip_model, clip_checkpoint=None if clip_checkpoint is None else str(clip_checkpoint), prompt=kind, n_ctx=n_ctx,
                             ctx_init=ctx_init, n_vpt=n_vpt, vpt_deep=vpt_deep, tiny_classes=base, **kw)
        if not (mdir / "gram.pt").exists():
            meta_train_gram(cfg, mdir, data_root, device, progress=progress)
        metas[kind] = load_gram_checkpoint(mdir / "gram.pt")
        made = {**asdict(GRAMMetaConfig()), **metas[kind].get("config", {})}
        want = asdict(cfg)
        diff = sorted(k for k in want if k not in ("threads", "checkpoint_minutes") and made[k] != want[k])
        if diff:
            raise ValueError(f"base-to-new: {mdir / 'gram.pt'} was meta-trained with other settings ({diff}); "
                             "use another --output")

    def make_net(method: str, seed: int) -> tuple[PromptedCLIP, Any]:
        kind = _KIND[method]
        flags = prompt_flags(kind, n_ctx=n_ctx, ctx_init=ctx_init, n_vpt=n_vpt, vpt_deep=vpt_deep) if kind else {
            "text_prompt": False, "visual_prompt": False}
        net = PromptedCLIP(clip, tokenizer, {c: names[c] for c in base}, input_transform=to_clip, seed=seed,
                           autocast=autocast, **flags)
        reg = None
        if _is_gram(method):
            if not method.endswith("_noinit"):
                net.load_prompt_state(metas[kind]["prompts"])
            if not method.endswith("_noreg"):
                reg = build_regulator(metas[kind]).to(device).eval()
        return net.to(device), reg

    t_start = time.perf_counter()
    for k in shots:
        for seed in seeds:
            g = torch.Generator().manual_seed(1000 * seed + k)
            pick = torch.cat([torch.nonzero(pool_y == c)[:, 0][torch.randperm(int((pool_y == c).sum()), generator=g)[:k]]
                              for c in base])
            sx, sy = pool_x[pick], pool_y[pick]
            for method in methods:
                key = f"{method}/K{k}/seed{seed}"
                if key in results["cells"]:
                    continue
                t0 = time.perf_counter()
                torch.manual_seed(seed)
                net, reg = make_net(method, seed)
                sec_step = tune_prompts(net, sx, sy, steps=0 if method == "zeroshot" else steps, lr=lr, regulator=reg, seed=seed,
                                        clip_grad=clip_grad)
                acc_base = _accuracy(net, val_x[test_base], val_y[test_base], base)
                net.add_classes({c: names[c] for c in new})
                acc_new = _accuracy(net, val_x[test_new], val_y[test_new], new)
                acc_c10 = None
                if cx is not None:
                    net.add_classes({200 + i: n for i, n in enumerate(cnames)})
                    acc_c10 = round(_accuracy(net, cx, cy + 200, [200 + i for i in range(10)]), 2)
                hm = 2 * acc_base * acc_new / (acc_base + acc_new) if acc_base + acc_new > 0 else 0.0
                results["cells"][key] = {"base": round(acc_base, 2), "new": round(acc_new, 2), "hm": round(hm, 2),
                                         "cifar10": acc_c10, "sec_per_step": round(sec_step, 4),
                                         "seconds": round(time.perf_counter() - t0, 1)}
                print(f"base-to-new {key}: {results['cells'][key]}", file=sys.stderr, flush=True)
                _merge_cell(res_path, results, key)
    return _write_summary(out, results, methods=methods, shots=shots, seeds=seeds, device=device, command=command,
                          minutes=(time.perf_counter() - t_start) / 60)


def _write_summary(out: Path, results: dict, *, methods, shots, seeds, device: str, command: str | None,
                   minutes: float) -> dict[str, Any]:
    """Summarise every cell on disk (other processes may have added some) into results.json/.md;
    a (method, K) with fewer seeds than asked is summarised over the seeds it has (``n``)."""
    from .io import write_json, write_text
    from .machine import cpu_model

    res_path = out / "results.json"
    with _locked(res_path):
        results["cells"] = json.loads(res_path.read_text())["cells"] if res_path.exists() else results["cells"]
    summary: dict[str, Any] = {}
    for method in methods:
        for k in shots:
            cells = [c for s in seeds if (c := results["cells"].get(f"{method}/K{k}/seed{s}"))]
            if cells:
                summary[f"{method}/K{k}"] = {m: _stats([c[m] for c in cells]) for m in ("base", "new", "hm", "cifar10")
                                             if cells[0][m] is not None}
                summary[f"{method}/K{k}"]["sec_per_step"] = round(float(np.mean([c["sec_per_step"] for c in cells])), 4)
    results["summary"] = summary
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_model": cpu_model(), "threads": torch.get_num_threads(), "device": device, "torch": torch.__version__}
    results["seeds"], results["shots"], results["methods"] = list(seeds), list(shots), list(methods)
    results["command"] = command
    results["wall_minutes_this_call"] = round(minutes, 1)
    with _locked(res_path):
        write_json(res_path, results)
    write_text(out / "results.md", _markdown(results))
    return results


def _markdown(r: dict) -> str:
    s = r["settings"]
    title = ("VALIDATION split (labels 0-49 base / 50-99 new, shot-pool images)" if s.get("validation")
             else "Tiny ImageNet 100 base / 100 new; CIFAR-10 cross-dataset")
    lines = [f"# Base-to-new under a `{s['shift']}` shift ({title})", "",
             f"CLIP `{s['clip_model']}` (`{s['clip_checkpoint']}`), {s['steps']} SGD steps at lr {s['lr']}"
             f"{', gradient norm clipped at ' + str(s['clip_grad']) if s.get('clip_grad') else ''}, "
             f"n_ctx {s['n_ctx']} (init {s.get('ctx_init')!r}), n_vpt {s['n_vpt']} (deep: {s['vpt_deep']}), GRAM meta-training {s['meta_episodes']} episodes. "
             f"Seeds {r.get('seeds')}; top-1 %, mean ± std over seeds.", ""]
    for k in r.get("shots", []):
        lines += [f"## K = {k}", "", "| method | seeds | base | new | HM | CIFAR-10 | s/step |",
                  "| --- | ---: | --- | --- | --- | --- | --- |"]
        for m in r.get("methods", []):
            c = r["summary"].get(f"{m}/K{k}")
            if c:
                f = lambda x: f"{x['mean']:.2f} ± {x['std']:.2f}"  # noqa: E731
                c10 = f(c["cifar10"]) if "cifar10" in c else "-"
                lines.append(f"| {m} | {c['base']['n']} | {f(c['base'])} | {f(c['new'])} | {f(c['hm'])} | {c10} | {c['sec_per_step']:.3f} |")
        lines.append("")
    lines += [f"Command: `{r.get('command')}`", f"Machine: {r.get('machine')}", ""]
    return "\n".join(lines)


def add_parser(sub) -> None:
    from .config import CLIP_CHECKPOINT_HELP

    p = sub.add_parser("base-to-new", help="CLIP prompt tuning: base-to-new + cross-dataset under a domain shift")
    p.add_argument("--output", default="benchmarks/results/base_to_new", help="results folder (resumed if it exists)")
    p.add_argument("--clip-model", default="fscl-vit-p8-64")
    p.add_argument("--clip-checkpoint", default="fscl", help=CLIP_CHECKPOINT_HELP)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help=f"any of {', '.join(METHODS)}; ablations: {', '.join(ABLATIONS)}")
    p.add_argument("--shift", default="lowres", choices=SHIFTS)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--n-ctx", type=int, default=4)
    p.add_argument("--ctx-init", default="a photo of a", help="CoOp context init words ('' for random N(0, 0.02))")
    p.add_argument("--n-vpt", type=int, default=4)
    p.add_argument("--vpt-deep", action="store_true")
    p.add_argument("--meta-episodes", type=int, default=300)
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--meta-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a GRAM meta-training setting (GRAMMetaConfig field), e.g. --meta-set inner_steps=5")
    p.add_argument("--clip-grad", type=float, help="clip each prompt gradient to this global L2 norm (default: no clipping)")
    p.add_argument("--autocast", choices=["bf16", "fp16"], help="mixed precision for the CLIP towers (default: fp32)")
    p.add_argument("--report-only", action="store_true", help="rewrite results.md from the stored cells; run nothing")
    p.add_argument("--no-progress", action="store_true", help="hide GRAM meta-training's progress bar (logs, CI)")
    p.add_argument("--validation", action="store_true",
                   help="the hyper-parameter split: labels 0-49 base / 50-99 new, shot-pool images only (no test image)")


def run_from_args(args) -> int:
    from ..models.gram import meta_config_overrides
    from .machine import device_problem

    why = device_problem(args.device)
    if why:
        raise ValueError(f"base-to-new: --device {why}")
    run_base_to_new(
        args.output, clip_model=args.clip_model, clip_checkpoint=None if args.clip_checkpoint.lower() == "none" else args.clip_checkpoint, shots=args.shots, seeds=args.seeds,
        methods=args.methods, shift=args.shift, steps=args.steps, lr=args.lr, n_ctx=args.n_ctx, ctx_init=args.ctx_init or None, n_vpt=args.n_vpt,
        vpt_deep=args.vpt_deep, meta_episodes=args.meta_episodes, data_root=args.data_root, device=args.device,
        threads=args.threads, validation=args.validation, meta=meta_config_overrides(args.meta_set, "base-to-new --meta-set"), clip_grad=args.clip_grad, autocast=args.autocast, report_only=args.report_only, progress=not args.no_progress, command="avalanche-fscl " + shlex.join(sys.argv[1:]),
    )
    print(f"results: {Path(args.output) / 'results.md'}")
    return 0
