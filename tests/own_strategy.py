"""A test strategy that brings every piece the contract allows: its own model, trainable
parameters and optimizer, base-session training, schedule, a stateful plugin and an extra
evaluation column. Registered as ``own_everything`` on import."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn

from avalanche_fscl.models import FSCILNet
from avalanche_fscl.strategies import (
    EvalColumn,
    FSCILStrategy,
    SessionSchedule,
    StrategyContext,
    StrategySpec,
    register_column,
    register_strategy,
)

FIT_CALLS: list[int] = []  # seeds fit_base_session ran for (in this process)


class MLP(nn.Module):
    """``(B, 1, 8, 8) -> (B, hidden)``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.out_dim = hidden
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(self, x):
        return self.net(x)


class SeenClasses(EvalColumn):
    """Fraction of the label space the model has made live (deterministic: 0.4, 0.6, ...)."""

    name, title = "seen_classes", "seen classes"

    def evaluate(self, strategy: FSCILStrategy, session: int) -> float:
        return int(strategy.model.active_classes) / strategy.model.n_classes


class CountingPlugin(SupervisedPlugin):
    """Counts training iterations per session (state that must survive a resume)."""

    def __init__(self):
        super().__init__()
        self.iterations: dict[int, int] = {}

    def after_training_iteration(self, strategy, *args, **kwargs):
        s = strategy.session
        self.iterations[s] = self.iterations.get(s, 0) + 1

    def state_dict(self) -> dict[str, Any]:
        return {"iterations": dict(self.iterations)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iterations = {int(k): int(v) for k, v in state["iterations"].items()}


@register_strategy("own_everything")
class OwnEverything(StrategySpec):
    """Test strategy: MLP + cosine head, base session fitted outside the loop, head-only Adam."""

    def __init__(self, hidden: int = 32, fit_steps: int = 300, novel_epochs: int = 3, seed: int = 0):
        super().__init__()
        self.hidden, self.fit_steps, self.novel_epochs, self.seed = hidden, fit_steps, novel_epochs, seed

    def build_model(self, ctx: StrategyContext) -> nn.Module:
        torch.manual_seed(ctx.seed)
        return FSCILNet(MLP(self.hidden), ctx.scenario.n_classes, head="cosine")

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [model.weight]  # the backbone is frozen after fit_base_session

    def make_optimizer(self, model: nn.Module, ctx: StrategyContext) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable_parameters(model), lr=1e-3)

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(base_epochs=0, novel_epochs=self.novel_epochs, novel_lr=0.01)  # fit does session 0

    def fit_base_session(self, strategy: FSCILStrategy, experience: Any, ctx: StrategyContext) -> None:
        FIT_CALLS.append(ctx.seed)
        model = strategy.model.to(strategy.device)
        data = experience.dataset.eval()
        x = torch.stack([data[i][0] for i in range(len(data))]).to(strategy.device)
        y = torch.tensor([int(data[i][1]) for i in range(len(data))], device=strategy.device)
        n = len(ctx.scenario.base_classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for _ in range(self.fit_steps):
            idx = torch.randint(len(y), (64,))
            loss = F.cross_entropy(model(x[idx])[:, :n], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.backbone.requires_grad_(False)

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [CountingPlugin()]

    def columns(self, ctx: StrategyContext) -> list[EvalColumn]:
        return [SeenClasses()]


@register_column("seen_classes_everywhere")
def seen_classes_everywhere(ctx: StrategyContext) -> EvalColumn:
    """The same column, requested by a config for every strategy."""
    col = SeenClasses()
    col.name, col.title = "seen_everywhere", "seen (all)"
    return col
