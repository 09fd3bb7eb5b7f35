import torch
torch.set_num_threads(1)
from avalanche_fscl.models.clip import load_clip
from avalanche_fscl.streams.captions import tiny_imagenet_images, tiny_imagenet_classes, clip_templates
from avalanche_fscl.benchmarks.pretrain_clip import zero_shot_accuracy
import sys  # fit_check.py CHECKPOINT [MODEL_NAME]  (default fscl-rn-64)
m, _, tok = load_clip(sys.argv[2] if len(sys.argv) > 2 else "fscl-rn-64", sys.argv[1])
names, _ = tiny_imagenet_classes(None)
t = clip_templates("imagenet1k")
for split in ("corpus", "shots", "val"):
    x, y = tiny_imagenet_images(None, split)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:2000]
    print(split, len(x), zero_shot_accuracy(m, tok, x[idx], y[idx], names, t, autocast=True), flush=True)
