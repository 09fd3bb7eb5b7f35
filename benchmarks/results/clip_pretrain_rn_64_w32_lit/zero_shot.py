"""Zero-shot top-1 of CLIP checkpoints on pretrain-clip's full evaluation sets (Tiny ImageNet val,
the unseen shot pool ``tiny_imagenet_shots``, CIFAR-10 test), measured as a run's final summary is
(bf16 autocast), so a kept file and a run's ``final.pt`` compare on one footing.

    python benchmarks/results/clip_pretrain_rn_64_w32_lit/zero_shot.py fscl-rn-64-w32 fscl runs/clip/lit_sweep/lr0.0003/final.pt
"""
import json
import sys

import torch

from avalanche_fscl.benchmarks.pretrain_clip import _EvalSets
from avalanche_fscl.models.clip import load_clip

torch.set_num_threads(2)
name, evals = sys.argv[1], _EvalSets(None)
for pretrained in sys.argv[2:]:
    model, _, tok = load_clip(name, pretrained)
    print(json.dumps({"pretrained": pretrained, **evals(model, tok, None, autocast=True)}), flush=True)
