"""Quick start: Avalanche's Naive strategy + our replay plugin + FSCIL metrics on digits_fscil.

    python -m avalanche_fscl.benchmarks.example

Prints the per-session FSCIL table (no data needed, about 2 s). The README's quick-start
snippet is this file's code, verbatim (tests/test_package.py checks that they agree).
"""

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from avalanche_fscl.benchmarks.wandb_logger import WandbRunLogger
from avalanche_fscl.models import Conv4, FSCILNet
from avalanche_fscl.plugins import ClassBalancedReplayPlugin, FSCILMetric
from avalanche_fscl.streams import digits_fscil

torch.manual_seed(0)                       # same seed, same table
scenario = digits_fscil(seed=0)            # 4 base classes, then 3 sessions of 2-way 5-shot
model = FSCILNet(Conv4(in_channels=1, hidden=32), scenario.n_classes, head="cosine")
metric = FSCILMetric()                     # session acc, base/novel acc, HM, AA, PD
strategy = Naive(
    model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
    train_mb_size=32, train_epochs=10, eval_mb_size=256,
    plugins=[ClassBalancedReplayPlugin(mem_per_class=5, seed=0)],
    evaluator=EvaluationPlugin(metric, loggers=[WandbRunLogger(mode="off")]),  # "offline": a W&B run
)
for s, experience in enumerate(scenario.train_stream):
    torch.manual_seed(s)                   # each session's shuffling, as the runner does
    strategy.train(experience)
    strategy.eval(scenario.test_stream[: s + 1])   # all classes seen so far
print(metric.table().to_markdown())
