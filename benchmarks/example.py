"""Quick start: Avalanche's Naive strategy + our replay plugin + FSCIL metrics on digits_fscil.

    python -m avalanche_fscl.benchmarks.example

Prints the per-session FSCIL table (no data needed).
"""

from __future__ import annotations

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from ..models import Conv4, FSCILNet
from ..plugins import ClassBalancedReplayPlugin, FSCILMetric
from ..streams import digits_fscil

__all__ = ["run_example"]


def run_example(seed: int = 0, epochs: int = 10) -> FSCILMetric:
    """Train and evaluate session by session; returns the metric holding the table."""
    torch.manual_seed(seed)
    scenario = digits_fscil(seed=seed)  # 4 base classes, then 3 sessions of 2-way 5-shot
    model = FSCILNet(Conv4(in_channels=1, hidden=32), scenario.n_classes, head="cosine")
    metric = FSCILMetric()  # session acc, base/novel acc, HM, AA, PD
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_mb_size=32, train_epochs=epochs, eval_mb_size=256,
        plugins=[ClassBalancedReplayPlugin(mem_per_class=5)],
        evaluator=EvaluationPlugin(metric, loggers=[]),
    )
    for s, experience in enumerate(scenario.train_stream):
        strategy.train(experience)
        strategy.eval(scenario.test_stream[: s + 1])  # all classes seen so far
    return metric


if __name__ == "__main__":
    print(run_example().table().to_markdown())
