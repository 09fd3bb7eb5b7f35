"""The checkpoint these runs score with (twenty-fourth session): `fscl-vit-p8-64` `fscl:prototypes_ls` with only its
logit scale set to 160, the cosine scale its text tower was distilled at (`prototype_scale`); fp32, not kept.

    python benchmarks/results/validation_clip/fscl_vit_prototypes_ls_gray/scale160/make_copy.py

writes runs/clip/vit_p8_64_prototypes_ls_scale160.pt (39 MB).
"""
import math

import torch

from avalanche_fscl.models.clip import load_clip, save_clip_checkpoint

model, _, _ = load_clip("fscl-vit-p8-64", "fscl:prototypes_ls")
with torch.no_grad():
    model.logit_scale.fill_(math.log(160.0))
save_clip_checkpoint("runs/clip/vit_p8_64_prototypes_ls_scale160.pt", model, "fscl-vit-p8-64")
