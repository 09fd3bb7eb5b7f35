"""Cost of GRAM's gradient regulation per prompt-tuning step, measured in one process.

    python -m avalanche_fscl.benchmarks.regulator_cost --out benchmarks/results/base_to_new/regulator_cost.json

For each prompt kind (coop, vpt, unigram) on the kept CLIP, times ``--steps`` prompt-tuning
steps (batch 32, 100 classes, 64 px) without and with a (meta-trained-size) regulator,
alternating blocks so that machine noise hits both alike; reports the median step time and
the ratio, and the host time of one ``regulate_`` call alone (``regulate_host_us``, minimum of
5 x 100 calls). ``--device cuda`` times on a GPU (synchronised per step), ``--autocast bf16`` under
mixed precision, ``--clip-checkpoint none`` with random weights (the step's cost does not
depend on the weights' values).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def measure(kind: str, steps: int, clip_model: str, clip_checkpoint: str | None, device: str = "cpu",
            autocast: str | None = None) -> dict:
    """Median seconds per prompt-tuning step without and with the regulator, and their ratio."""
    from ..models.clip import clip_image_transform, load_clip
    from ..models.gram import prompt_flags
    from ..models.prompts import PromptedCLIP
    from ..models.regulator import GradientRegulator

    clip, _, tok = load_clip(clip_model, clip_checkpoint, device=device)
    net = PromptedCLIP(clip, tok, [f"class {i}" for i in range(100)], input_transform=clip_image_transform(clip),
                       autocast=autocast, **prompt_flags(kind, ctx_init="a photo of a")).to(device)
    reg = GradientRegulator({n: p.shape[-1] for n, p in net.named_prompt_parameters()}).to(device)
    opt = torch.optim.SGD(net.prompt_parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(32, 3, 64, 64, device=device), torch.randint(0, 100, (32,), device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    net.train()

    def step(regulate: bool) -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if regulate:
            reg.regulate_(net)
        opt.step()
        sync()
        return time.perf_counter() - t0

    for _ in range(3):
        step(False)
    times = {False: [], True: []}
    for block in range(steps // 5):
        for regulate in ((False, True) if block % 2 == 0 else (True, False)):
            times[regulate] += [step(regulate) for _ in range(5)]
    plain, regulated = statistics.median(times[False]), statistics.median(times[True])
    # host time of the regulator call alone (no synchronisation): what a launch-bound GPU step waits on
    host = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(100):
            reg.regulate_(net)
        host.append((time.perf_counter() - t0) / 100)
    return {"plain_s": round(plain, 4), "regulated_s": round(regulated, 4), "ratio": round(regulated / plain, 3),
            "regulate_host_us": round(min(host) * 1e6, 1)}


def main(argv=None) -> int:
    from .config import CLIP_CHECKPOINT_HELP
    from .io import write_json
    from .machine import device_problem
    from .runner import _env_info

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--clip-model", default="fscl-vit-p8-64")
    p.add_argument("--clip-checkpoint", default="fscl", help=CLIP_CHECKPOINT_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--autocast", choices=["bf16", "fp16"], help="mixed precision for the forward pass (default: fp32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    why = device_problem(a.device)
    if why:
        p.error(f"--device {why}")
    torch.set_num_threads(a.threads)
    ckpt = None if a.clip_checkpoint.lower() == "none" else a.clip_checkpoint
    res = {k: measure(k, a.steps, a.clip_model, ckpt, a.device, a.autocast) for k in ("coop", "vpt", "unigram")}
    res["machine"] = {**_env_info(a.device), "autocast": a.autocast or "fp32"}
    res["command"] = "python -m avalanche_fscl.benchmarks.regulator_cost " + " ".join(argv or __import__("sys").argv[1:])
    write_json(a.out, res)
    print(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
