"""Choosing ``prototype_scale`` and ``prototype_steps`` on the unseen shot pool.

The prototypes are a cosine classifier over the locked image tower's features of the corpus
(images and mirror images); a text tower aligned to them can at best classify like them. So the
settings are chosen by the prototypes' own 200-way accuracy on ``tiny_imagenet_shots`` (Tiny
ImageNet train images 120-149, never in any corpus); val is printed next to it, never used.

    python benchmarks/results/clip_pretrain_rn_64_w32_prototypes/sweep.py features            # 1.5 min
    python benchmarks/results/clip_pretrain_rn_64_w32_prototypes/sweep.py fit --flip 0 1 --scales 20 40 80 --at 300 600 900 1200
    python benchmarks/results/clip_pretrain_rn_64_w32_prototypes/sweep.py fit --flip 1 --scales 100 160 --at 600 1200 1600 2000
    python benchmarks/results/clip_pretrain_rn_64_w32_prototypes/sweep.py fit --scales 160 --label-smoothing 0.1 0.3 0.5 0.7 --at 400 800 1200 1600

Another locked image tower: ``--clip-model NAME --pretrained TAG --features FILE`` on both commands
(e.g. ``--clip-model fscl-vit-p8-64 --pretrained fscl --features runs/clip/prototype_sweep_features_vit.pt``).

``fit`` runs :func:`fit_image_prototypes` (SGD, lr 0.1, momentum 0.9, from the class means) and
reads the rows at each ``--at`` step of one run. (The recorded sweep ran the same steps through
autograd on the plain loss, before the function computed its gradient by hand; same rows to 3e-7.) ``features`` also prints the
class-name zero-shot classifier, the class means and means plus text on both sets.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

FEATURES = "runs/clip/prototype_sweep_features.pt"


def acc(w: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> float:
    return round(100 * ((f @ F.normalize(w, dim=1).T).argmax(1) == y).float().mean().item(), 2)


def features(clip_model: str, pretrained: str, path: str, root: str = "../shared/data") -> None:
    from avalanche_fscl.models.clip import clip_image_transform, encode_class_names, load_clip
    from avalanche_fscl.streams.captions import clip_templates, tiny_imagenet_classes, tiny_imagenet_images

    model, _, tok = load_clip(clip_model, pretrained=pretrained)
    model.eval()
    tf = clip_image_transform(model)

    @torch.no_grad()
    def enc(x, flip=False):
        return torch.cat([model.encode_image(tf(x[i : i + 500]).flip(3) if flip else tf(x[i : i + 500]), normalize=True).float()
                          for i in range(0, len(x), 500)])

    with torch.no_grad():
        text = encode_class_names(model, tok, tiny_imagenet_classes(root)[0], clip_templates("imagenet1k", root)).float()
    (vx, vy), (cx, cy), (sx, sy) = (tiny_imagenet_images(root, s) for s in ("val", "corpus", "shots"))
    d = dict(fv=enc(vx), fc=enc(cx), fs=enc(sx), fcf=enc(cx, True), vy=vy, cy=cy, sy=sy, text=text)
    torch.save(d, path)
    m = F.normalize(torch.zeros(200, d["fc"].shape[1]).index_add_(0, cy, d["fc"]), dim=1)
    res = {"text": (acc(text, d["fs"], sy), acc(text, d["fv"], vy)), "means": (acc(m, d["fs"], sy), acc(m, d["fv"], vy))}
    for b in (0.25, 0.5, 1.0):
        w = m + b * F.normalize(text, dim=1)
        res[f"means+{b}text"] = (acc(w, d["fs"], sy), acc(w, d["fv"], vy))
    print(json.dumps({"(shots, val)": res}))


def fit(path: str, flips: list[int], scales: list[float], at: list[int], smoothing: list[float]) -> None:
    from avalanche_fscl.benchmarks.pretrain_clip import fit_image_prototypes

    d = torch.load(path)
    fc, fcf, cy, fs, sy, fv, vy = (d[k] for k in ("fc", "fcf", "cy", "fs", "sy", "fv", "vy"))
    for flip in flips:
        x, y = (torch.cat([fc, fcf]), torch.cat([cy, cy])) if flip else (fc, cy)
        for s in scales:
            for ls in smoothing:
                curve = []

                def read(k: int, rows: torch.Tensor) -> None:
                    if k in at:
                        curve.append((k, acc(rows, fs, sy), acc(rows, fv, vy)))
                fit_image_prototypes(x, y, 200, s, max(at), on_step=read, label_smoothing=ls)
                row = {"flip": bool(flip), "scale": s} | ({"label_smoothing": ls} if ls else {})
                print(json.dumps(row | {"(step, shots, val)": curve}), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.manual_seed(0)
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["features", "fit"])
    p.add_argument("--flip", type=int, nargs="+", default=[1])
    p.add_argument("--scales", type=float, nargs="+", default=[100.0])
    p.add_argument("--at", type=int, nargs="+", default=[1200])
    p.add_argument("--label-smoothing", type=float, nargs="+", default=[0.0])
    p.add_argument("--clip-model", default="fscl-rn-64-w32")
    p.add_argument("--pretrained", default="fscl:warm_color2")
    p.add_argument("--features", default=FEATURES, help="where `features` writes them and `fit` reads them")
    a = p.parse_args()
    if a.what == "features":
        features(a.clip_model, a.pretrained, a.features)
    else:
        fit(a.features, a.flip, a.scales, a.at, a.label_smoothing)
