"""Runner overhead: one session of ``finetune`` through the runner's strategy versus a plain
PyTorch loop doing the same epochs on the same data, same model, same batch size.

    python -m avalanche_fscl.benchmarks.overhead --stream omniglot_fscil --epochs 1 --repeats 2

Writes a JSON record (``--output``) with both times per epoch and their ratio.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from avalanche.training.plugins import EvaluationPlugin

from ..models import FSCILNet, create_backbone
from ..plugins import FSCILMetric
from ..streams import get_stream
from ..strategies import SessionSchedule, StrategyContext, create_strategy
from .io import write_json
from .machine import device_problem
from .runner import _env_info

__all__ = ["measure_overhead"]


class _HostProbe(torch.nn.Module):
    """A backbone whose compute is negligible (flatten + one 16-unit linear layer), so that an
    epoch's time is the host's: data loading, the strategy's callbacks, kernel launches. That is
    what a fast GPU waits on for a model as small as Conv4 (``--backbone host_probe``)."""

    out_dim = 16

    def __init__(self, in_features: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_features, self.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _model(backbone: str, in_shape: tuple[int, ...], n_classes: int, seed: int) -> FSCILNet:
    torch.manual_seed(seed)
    if backbone == "host_probe":
        return FSCILNet(_HostProbe(math.prod(in_shape)), n_classes, head="cosine")
    return FSCILNet(create_backbone(backbone, in_channels=in_shape[0]), n_classes, head="cosine")


def measure_overhead(stream: str, backbone: str, epochs: int, batch_size: int, data_root: str | None,
                     device: str = "cpu", seed: int = 0, stream_args: dict | None = None,
                     repeats: int = 2, materialize_mb: float = 1024) -> dict:
    """Seconds per epoch of the base session: runner strategy vs. plain loop, and the ratio.
    ``materialize_mb``: the runner strategy's (0: Avalanche's per-sample loading)."""
    sc = get_stream(stream, data_root=data_root, seed=seed, **(stream_args or {}))
    exp = sc.train_stream[0]
    in_shape = tuple(exp.dataset[0][0].shape)

    # plain PyTorch: the same (train-transformed) samples, materialised once as one tensor
    ds = exp.dataset.train()
    x = torch.stack([ds[i][0] for i in range(len(ds))]).to(device)
    y = torch.tensor([int(ds[i][1]) for i in range(len(ds))], device=device)

    def plain_loop() -> float:
        model = _model(backbone, in_shape, sc.n_classes, seed).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        model.train()
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(y), device=device)
            for i in range(0, len(y), batch_size):
                idx = perm[i : i + batch_size]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / epochs

    def runner_loop() -> float:
        model = _model(backbone, in_shape, sc.n_classes, seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified")
            evaluator = EvaluationPlugin(FSCILMetric(stream_name="test"), loggers=[])  # as in the runner
        strategy = create_strategy(
            "finetune", StrategyContext(sc, seed=seed, device=device), model=model, optimizer=opt,
            train_mb_size=batch_size, schedule=SessionSchedule(base_epochs=epochs, base_lr=0.1),
            evaluator=evaluator, materialize_mb=materialize_mb,
        )
        t0 = time.perf_counter()
        strategy.train(exp)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / epochs

    # interleaved repeats; the minimum of each is the least disturbed by other load
    times = {"plain": [], "runner": []}
    for _ in range(repeats):
        times["plain"].append(plain_loop())
        times["runner"].append(runner_loop())
    plain, runner = min(times["plain"]), min(times["runner"])
    return {
        "stream": stream, "backbone": backbone, "epochs": epochs, "batch_size": batch_size,
        "samples": len(y), "plain_s_per_epoch": plain, "runner_s_per_epoch": runner,
        "ratio": runner / plain, "repeats": times, "torch_threads": torch.get_num_threads(),
        "materialize_mb": materialize_mb,
        "environment": _env_info(device),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stream", default="omniglot_fscil")
    p.add_argument("--backbone", default="conv4", help="a registered backbone, or host_probe (negligible compute: the host's time alone)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats (minimum reported)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--materialize-mb", type=float, default=1024,
                   help="the runner strategy's materialize_mb (0: per-sample loading, as before 2026-12-04)")
    p.add_argument("--output", help="JSON file for the record")
    a = p.parse_args()
    why = device_problem(a.device)
    if why:
        p.error(f"--device {why}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.materialize_mb < 0:
        p.error(f"--materialize-mb must be >= 0, got {a.materialize_mb:g}")
    rec = measure_overhead(a.stream, a.backbone, a.epochs, a.batch_size, a.data_root, a.device,
                           repeats=a.repeats, materialize_mb=a.materialize_mb)
    print(f"{a.stream} / {a.backbone}: plain {rec['plain_s_per_epoch']:.2f} s/epoch, "
          f"runner {rec['runner_s_per_epoch']:.2f} s/epoch, ratio {rec['ratio']:.3f}")
    if a.output:
        write_json(a.output, rec)


if __name__ == "__main__":
    main()
