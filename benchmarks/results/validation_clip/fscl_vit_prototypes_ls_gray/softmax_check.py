"""How peaked CLIP's class softmax is on the validation split (diagnostic of 2026-12-07, twenty-fourth session).

Grey shot-pool images of labels 0-49 (rank >= 16 in the pool, as ``base-to-new --validation`` holds them out), scored
zero-shot against the 50 class names ("a photo of a {c}.") at each checkpoint's own logit scale. Prints the mean
cross-entropy, the mean top-1 softmax probability and the mean spread (std over classes) of the cosines. Output:
softmax_check.txt beside this file.

    python benchmarks/results/validation_clip/fscl_vit_prototypes_ls_gray/softmax_check.py
    python benchmarks/results/validation_clip/fscl_vit_prototypes_ls_gray/softmax_check.py fscl-rn-64-w32 fscl:warm_color2 fscl:prototypes_ls

(optional arguments: the architecture, then its checkpoints; default the ViT's two).
"""
import sys

import torch
import torch.nn.functional as F

from avalanche_fscl.benchmarks.base_to_new import apply_shift
from avalanche_fscl.models.clip import clip_image_transform, encode_class_names, load_clip
from avalanche_fscl.streams.captions import tiny_imagenet_classes, tiny_imagenet_images

torch.set_num_threads(1)
names, _ = tiny_imagenet_classes(None)
x, y = tiny_imagenet_images(None, "shots")
rank = torch.zeros_like(y)
for c in range(50):
    rank[y == c] = torch.arange(int((y == c).sum()))
keep = (y < 50) & (rank >= 16)
x, y = apply_shift(x[keep], "grayscale"), y[keep]
model_name, checkpoints = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 2 else ("fscl-vit-p8-64", ["fscl", "fscl:prototypes_ls"])
for checkpoint in checkpoints:
    clip, _, tok = load_clip(model_name, checkpoint)
    clip.eval()
    with torch.no_grad():
        text = F.normalize(encode_class_names(clip, tok, names[:50]), dim=-1)
        img = F.normalize(clip.encode_image(clip_image_transform(clip)(x)), dim=-1)
        cos = img @ text.T
        logits = clip.logit_scale.exp() * cos
        p = logits.softmax(-1)
    print(f"{model_name} {checkpoint}: logit scale {clip.logit_scale.exp().item():.1f}, {len(y)} images, "
          f"CE {F.cross_entropy(logits, y).item():.3f} (log 50 = 3.912), top-1 prob {p.max(-1).values.mean().item():.3f}, "
          f"cosine std over classes {cos.std(-1).mean().item():.4f}, top-1 acc {(logits.argmax(-1) == y).float().mean().item() * 100:.2f}%")
