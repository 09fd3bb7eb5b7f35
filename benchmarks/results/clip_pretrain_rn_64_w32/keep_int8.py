"""Keep a finished pretraining run's weights in int8 and measure what that costs.

    python keep_int8.py RUN_DIR MODEL_NAME [VARIANT]   # e.g. runs/clip/rn_64_w32 fscl-rn-64-w32

Writes models/clip_weights/<MODEL_NAME>.pt (``load_clip(MODEL_NAME, pretrained="fscl")``), or with
VARIANT <MODEL_NAME>.<VARIANT>.pt (``pretrained="fscl:<VARIANT>"``), via
``save_clip_checkpoint(storage="int8")``, and the same name's .summary.json (the run's summary;
``final_sha256`` and ``zero_shot`` become the kept file's, the run's fp16 ``final.pt`` values move to ``run_final_sha256`` / ``run_zero_shot``), and
prints the full-set zero-shot accuracy of both files, measured the same way (bf16 autocast).
"""
import hashlib
import json
import sys
from pathlib import Path

import torch

from avalanche_fscl.benchmarks.pretrain_clip import _EvalSets
from avalanche_fscl.models.clip import KEPT_CLIP_DIR, load_clip, save_clip_checkpoint
from avalanche_fscl.benchmarks.io import write_json

run, name = Path(sys.argv[1]), sys.argv[2]
stem = f"{name}.{sys.argv[3]}" if len(sys.argv) > 3 else name
torch.set_num_threads(2)
evals = _EvalSets(None)
fp16, _, tok = load_clip(name, run / "final.pt")
kept = KEPT_CLIP_DIR / f"{stem}.pt"
save_clip_checkpoint(kept, fp16, name, storage="int8")
int8, _, _ = load_clip(name, kept)
acc = {f: evals(m, tok, None, autocast=True) for f, m in (("fp16", fp16), ("int8", int8))}
print(json.dumps(acc), flush=True)
summary = json.loads((run / "summary.json").read_text())
summary["run_final_sha256"], summary["run_zero_shot"] = summary["final_sha256"], summary["zero_shot"]
summary["final_sha256"] = hashlib.sha256(kept.read_bytes()).hexdigest()
summary["zero_shot"] = acc["int8"]
summary["zero_shot_fp16_file"] = acc["fp16"]
summary["storage"] = "int8"
write_json(KEPT_CLIP_DIR / f"{stem}.summary.json", summary)
print(kept, kept.stat().st_size, summary["final_sha256"])
