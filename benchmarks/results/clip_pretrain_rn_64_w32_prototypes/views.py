"""Do prototypes fitted on more views of each corpus image classify unseen images better?

The chosen prototypes (recipe ``rn_64_w32_prototypes``) are fitted on every Tiny ImageNet corpus
image and its mirror image. Here ``--crops`` random-resized crops (area 0.5-1, random flips) of each
image are added; the prototypes' own accuracy is read on the shot pool (the choice) and val at a
few steps. Uses :func:`sweep.py`'s stored features (run ``sweep.py features`` first).

    python benchmarks/results/clip_pretrain_rn_64_w32_prototypes/views.py --crops 2 --at 800 1200 1600 2000
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from avalanche_fscl.benchmarks.pretrain_clip import fit_image_prototypes, random_resized_crop
from avalanche_fscl.models.clip import clip_image_transform, load_clip
from avalanche_fscl.streams.captions import tiny_imagenet_images

FEATURES = "runs/clip/prototype_sweep_features.pt"


def acc(w: torch.Tensor, f: torch.Tensor, y: torch.Tensor) -> float:
    return round(100 * ((f @ F.normalize(w, dim=1).T).argmax(1) == y).float().mean().item(), 2)


@torch.no_grad()
def crop_features(n_crops: int, root: str = "../shared/data") -> torch.Tensor:
    model, _, _ = load_clip("fscl-rn-64-w32", pretrained="fscl:warm_color2")
    model.eval()
    norm = clip_image_transform(model)  # resize (a no-op at 64 px) and normalise
    cx, _ = tiny_imagenet_images(root, "corpus")
    out = []
    for v in range(n_crops):
        g = torch.Generator().manual_seed(1000 + v)
        for i in range(0, len(cx), 500):
            x = random_resized_crop(cx[i : i + 500].float() / 255.0, 64, (0.5, 1.0), True, g)
            out.append(model.encode_image(norm(x), normalize=True).float())
    return torch.cat(out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    p = argparse.ArgumentParser()
    p.add_argument("--crops", type=int, default=2)
    p.add_argument("--scale", type=float, default=160.0)
    p.add_argument("--at", type=int, nargs="+", default=[800, 1200, 1600, 2000])
    a = p.parse_args()
    d = torch.load(FEATURES)
    crops = crop_features(a.crops)
    x = torch.cat([d["fc"], d["fcf"], crops])
    y = d["cy"].repeat(2 + a.crops)
    curve = []
    fit_image_prototypes(x, y, 200, a.scale, max(a.at),
                         on_step=lambda k, w: curve.append((k, acc(w, d["fs"], d["sy"]), acc(w, d["fv"], d["vy"]))) if k in a.at else None)
    print(json.dumps({"crops": a.crops, "scale": a.scale, "(step, shots, val)": curve}))
