"""How good a teacher would an image tower give? Prototypes of its features, read on the shot pool.

A text tower distilled from prototypes (``loss: prototypes``) classifies at best like them, so an
image tower is worth distilling from only if its prototypes beat ``fscl:warm_color2``'s. This
script encodes the corpus (images and mirror images), the shot pool and val with one image tower,
fits the recipe's prototypes (scale 160, 1,600 steps; read at 800 and 1,600) and prints their
200-way accuracy next to the class-name zero-shot classifier and the class means. Choices are made
on the shot pool (Tiny ImageNet train images 120-149, in no corpus); val is printed, never used.

    python benchmarks/results/clip_pretrain_rn_64_w32_prototypes/image_towers/teacher.py CKPT[,CKPT...] OUT.json

Several checkpoints are averaged weight by weight (stochastic weight averaging over the ends of
warm-restart cycles), and the batch-norm statistics of the average are recomputed on the corpus
images (clean, random mirror), as SWA requires. ~2.4 minutes per tower on 2 cores (bf16 autocast).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from avalanche_fscl.benchmarks.pretrain_clip import fit_image_prototypes
from avalanche_fscl.models.clip import clip_image_transform, encode_class_names, load_clip
from avalanche_fscl.streams.captions import clip_templates, tiny_imagenet_classes, tiny_imagenet_images


def acc(w: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> float:
    return round(100 * ((f @ F.normalize(w, dim=1).T).argmax(1) == y).float().mean().item(), 2)


def main(paths: list[str], out: str) -> None:
    t0 = time.time()
    model, _, tok = load_clip("fscl-rn-64-w32", pretrained=paths[0])
    tf = clip_image_transform(model)
    (vx, vy), (cx, cy), (sx, sy) = (tiny_imagenet_images(None, s) for s in ("val", "corpus", "shots"))
    if len(paths) > 1:
        sds = [torch.load(p, map_location="cpu", weights_only=False)["state_dict"] for p in paths]
        model.load_state_dict({k: sum(sd[k].float() for sd in sds) / len(sds) if v.is_floating_point() else v
                               for k, v in sds[0].items()})
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative mean over the whole pass
        model.train()
        perm = torch.randperm(len(cx))
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            for i in range(0, len(cx), 256):
                b = tf(cx[perm[i : i + 256]])
                model.visual(torch.where(torch.rand(len(b), 1, 1, 1) < 0.5, b, b.flip(3)))
    model.eval()

    @torch.no_grad()
    def enc(x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return torch.cat([model.encode_image(tf(x[i : i + 500]).flip(3) if flip else tf(x[i : i + 500]),
                                                 normalize=True).float() for i in range(0, len(x), 500)])

    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        text = encode_class_names(model, tok, tiny_imagenet_classes(None)[0], clip_templates("imagenet1k")).float()
    fv, fs = enc(vx), enc(sx)
    x, y = torch.cat([enc(cx), enc(cx, True)]), torch.cat([cy, cy])
    means = torch.zeros(200, x.shape[1]).index_add_(0, y, x)
    res = {"checkpoints": paths, "(shots, val)": {"class-name text": (acc(text, fs, sy), acc(text, fv, vy)),
                                                   "class means": (acc(means, fs, sy), acc(means, fv, vy))}}

    def read(k: int, rows: torch.Tensor) -> None:
        if k in (800, 1600):
            res["(shots, val)"][f"prototypes, scale 160, {k} steps"] = (acc(rows, fs, sy), acc(rows, fv, vy))

    fit_image_prototypes(x, y, 200, 160.0, 1600, on_step=read)
    res["minutes"] = round((time.time() - t0) / 60, 1)
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(res, fh, indent=1)
    os.replace(tmp, out)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.manual_seed(0)
    main(sys.argv[1].split(","), sys.argv[2])
