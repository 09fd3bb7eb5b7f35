"""Is a CLIP's zero-shot accuracy limited by its text side or its image side?

Classifies Tiny ImageNet val (200-way) from the model's own normalised image features in four ways:
its class-name text embeddings (zero-shot, the 80 ImageNet templates), the class means of its
training images (the pretraining corpus: train images 0-119 per class), a linear probe on those
(L2 strength chosen on a sixth of the corpus held out), and a 10-NN vote over them; plus
zero-shot on the unseen shot pool (train images 120-149). Text well below the image-feature
classifiers means the text tower is behind the image tower.

    python benchmarks/results/clip_pretrain_rn_64_w32_lit/image_vs_text.py fscl-rn-64-w32 fscl
    python benchmarks/results/clip_pretrain_rn_64_w32_lit/image_vs_text.py fscl-rn-64-w32 runs/clip/rn_64_w32_lit/final.pt
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from avalanche_fscl.models.clip import clip_image_transform, encode_class_names, load_clip
from avalanche_fscl.streams.captions import clip_templates, tiny_imagenet_classes, tiny_imagenet_images


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return round(100 * (logits.argmax(1) == y).float().mean().item(), 2)


def linear_probe(x: torch.Tensor, y: torch.Tensor, wd: float, n_classes: int = 200) -> torch.Tensor:
    """Multinomial logistic regression (full-batch L-BFGS) -> weights ``(C, D + 1)``."""
    w = torch.zeros(n_classes, x.shape[1] + 1, requires_grad=True)
    xb = torch.cat([x, torch.ones(len(x), 1)], 1)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w.T, y) + wd * w[:, :-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


@torch.no_grad()
def main(name: str, pretrained: str, data_root: str = "../shared/data") -> dict:
    torch.manual_seed(0)
    model, _, tok = load_clip(name, pretrained=pretrained)
    model.eval()
    tf = clip_image_transform(model)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.encode_image(tf(x[i : i + 500]), normalize=True).float() for i in range(0, len(x), 500)])

    names = tiny_imagenet_classes(data_root)[0]
    text = encode_class_names(model, tok, names, clip_templates("imagenet1k", data_root)).float()
    (vx, vy), (cx, cy), (sx, sy) = (tiny_imagenet_images(data_root, s) for s in ("val", "corpus", "shots"))
    fv, fc, fs = encode(vx), encode(cx), encode(sx)
    means = F.normalize(torch.zeros(200, fc.shape[1]).index_add_(0, cy, fc), dim=1)
    top = (fv @ fc.T).topk(10, 1)
    votes = torch.zeros(len(fv), 200).scatter_add_(1, cy[top.indices], top.values)
    perm = torch.randperm(len(fc), generator=torch.Generator().manual_seed(0))
    held, fit = perm[: len(fc) // 6], perm[len(fc) // 6 :]
    with torch.enable_grad():
        ones = lambda f: torch.cat([f, torch.ones(len(f), 1)], 1)  # noqa: E731
        scores = {wd: top1(ones(fc[held]) @ linear_probe(fc[fit], cy[fit], wd).T, cy[held]) for wd in (1e-6, 1e-5, 1e-4, 1e-3)}
        wd = max(scores, key=scores.get)
        probe = linear_probe(fc, cy, wd)
    out = {
        "model": name, "pretrained": pretrained,
        "zero_shot_val": top1(fv @ text.T, vy), "zero_shot_shots": top1(fs @ text.T, sy),
        "class_means_val": top1(fv @ means.T, vy), "linear_probe_val": top1(ones(fv) @ probe.T, vy),
        "probe_wd": wd, "probe_holdout": scores, "knn10_val": top1(votes, vy),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    main(sys.argv[1], sys.argv[2])
