"""The checkpoints these runs score with (twenty-fourth session): a kept distilled CLIP with only its logit scale set to
160, the cosine scale its text tower was distilled at (`prototype_scale`); fp32, not kept.

    python benchmarks/results/validation_clip/fscl_vit_prototypes_ls_gray/scale160/make_copy.py
    python benchmarks/results/validation_clip/fscl_vit_prototypes_ls_gray/scale160/make_copy.py fscl-rn-64-w32 runs/clip/rn_w32_prototypes_ls_scale160.pt

(optional arguments: the architecture of `fscl:prototypes_ls` and the output file; default the ViT, writing
runs/clip/vit_p8_64_prototypes_ls_scale160.pt, 39 MB).
"""
import math
import sys

import torch

from avalanche_fscl.models.clip import load_clip, save_clip_checkpoint

model_name, out = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else ("fscl-vit-p8-64", "runs/clip/vit_p8_64_prototypes_ls_scale160.pt")
model, _, _ = load_clip(model_name, "fscl:prototypes_ls")
with torch.no_grad():
    model.logit_scale.fill_(math.log(160.0))
save_clip_checkpoint(out, model, model_name)
