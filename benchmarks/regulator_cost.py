"""Cost of GRAM's gradient regulation per prompt-tuning step, measured in one process.

    python -m avalanche_fscl.benchmarks.regulator_cost --out benchmarks/results/base_to_new/regulator_cost.json

For each prompt kind (coop, vpt, unigram) on the kept CLIP, times ``--steps`` prompt-tuning
steps (batch 32, 100 classes, 64 px) without and with a (meta-trained-size) regulator,
alternating blocks so that machine noise hits both alike; reports the median step time and
the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def measure(kind: str, steps: int, clip_model: str, clip_checkpoint: str | None) -> dict:
    from ..models.clip import clip_image_transform, load_clip
    from ..models.gram import prompt_flags
    from ..models.prompts import PromptedCLIP
    from ..models.regulator import GradientRegulator

    clip, _, tok = load_clip(clip_model, clip_checkpoint)
    net = PromptedCLIP(clip, tok, [f"class {i}" for i in range(100)], input_transform=clip_image_transform(clip),
                       **prompt_flags(kind, ctx_init="a photo of a"))
    reg = GradientRegulator({n: p.shape[-1] for n, p in net.named_parameters() if not n.startswith("clip.")})
    opt = torch.optim.SGD(net.prompt_parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(32, 3, 64, 64), torch.randint(0, 100, (32,))
    net.train()

    def step(regulate: bool) -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if regulate:
            reg.regulate_(net)
        opt.step()
        return time.perf_counter() - t0

    for _ in range(3):
        step(False)
    times = {False: [], True: []}
    for block in range(steps // 5):
        for regulate in ((False, True) if block % 2 == 0 else (True, False)):
            times[regulate] += [step(regulate) for _ in range(5)]
    plain, regulated = statistics.median(times[False]), statistics.median(times[True])
    return {"plain_s": round(plain, 4), "regulated_s": round(regulated, 4), "ratio": round(regulated / plain, 3)}


def main(argv=None) -> int:
    from .io import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--clip-model", default="fscl-vit-p8-64")
    p.add_argument("--clip-checkpoint", default="fscl")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = {k: measure(k, a.steps, a.clip_model, a.clip_checkpoint) for k in ("coop", "vpt", "unigram")}
    res["machine"] = {"platform": platform.platform(), "threads": a.threads, "torch": torch.__version__}
    res["command"] = "python -m avalanche_fscl.benchmarks.regulator_cost " + " ".join(argv or __import__("sys").argv[1:])
    write_json(a.out, res)
    print(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
