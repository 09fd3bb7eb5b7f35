"""Baseline strategies for few-shot class-incremental learning.

All use the run's :class:`~avalanche_fscl.models.FSCILNet`, optimizer and base-session
training (equal :meth:`~avalanche_fscl.strategies.StrategySpec.base_session_key`), so the
runner trains the base session once per seed and shares it; they differ afterwards.
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin

from ..plugins import (
    ClassBalancedReplayPlugin,
    NCMClassifierPlugin,
    PrototypeClassifierPlugin,
    StatefulEWCPlugin,
    StatefulLwFPlugin,
)
from .registry import register_strategy
from .spec import StrategyContext, StrategySpec
from .template import SessionSchedule

__all__ = ["Finetune", "EWC", "LwF", "Replay", "NCM", "Joint", "Prototype"]


def _check_epochs(epochs: int | None) -> int | None:
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0):
        raise ValueError(f"epochs must be an integer >= 0 or None, got {epochs!r}")
    return epochs


@register_strategy("finetune")
class Finetune(StrategySpec):
    """Fine-tune everything on each session (Avalanche Naive): the forgetting lower bound."""


@register_strategy("ewc")
class EWC(StrategySpec):
    """Fine-tuning + EWC penalty (Fisher importance of earlier sessions' weights).

    With plain SGD the penalty's curvature ``2 * ewc_lambda * F`` must stay below
    ``2 / lr``: on digits_fscil ``ewc_lambda >= 10`` at ``novel_lr=0.01`` diverges and the
    model collapses to one class, hence the small default.
    """

    def __init__(self, ewc_lambda: float = 1.0):
        super().__init__()
        self.ewc_lambda = ewc_lambda

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [StatefulEWCPlugin(ewc_lambda=self.ewc_lambda)]


@register_strategy("lwf")
class LwF(StrategySpec):
    """Fine-tuning + Learning without Forgetting (distillation on the old classes' logits)."""

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0):
        super().__init__()
        self.alpha, self.temperature = alpha, temperature

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [StatefulLwFPlugin(alpha=self.alpha, temperature=self.temperature)]


@register_strategy("replay")
class Replay(StrategySpec):
    """Fine-tuning with a class-balanced replay memory (mem_per_class samples per class).

    ``epochs`` overrides the incremental sessions' epochs (each epoch also covers the memory).
    """

    def __init__(self, mem_per_class: int = 5, seed: int = 0, epochs: int | None = None):
        super().__init__()
        if not isinstance(mem_per_class, int) or isinstance(mem_per_class, bool) or mem_per_class < 1:
            raise ValueError(f"mem_per_class must be an integer >= 1, got {mem_per_class!r}")
        self.mem_per_class, self.seed, self.epochs = mem_per_class, seed, _check_epochs(epochs)

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [ClassBalancedReplayPlugin(mem_per_class=self.mem_per_class, seed=self.seed)]

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(novel_epochs=self.epochs)


@register_strategy("ncm")
class NCM(Replay):
    """iCaRL-style: replay memory + nearest-class-mean classifier over normalised features.

    ``epochs`` overrides the incremental sessions' epochs (each epoch also covers the memory).
    """

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        memory = ClassBalancedReplayPlugin(mem_per_class=self.mem_per_class, seed=self.seed)
        return [memory, NCMClassifierPlugin(source="memory", replay=memory)]


@register_strategy("joint")
class Joint(StrategySpec):
    """Upper bound: every session re-trains on all data seen so far, class-balanced.

    Not a continual method: it keeps every training sample. Incremental sessions draw
    class-balanced batches (each class equally likely, so 5-shot classes are learned next
    to thousands of base samples) for ``epochs`` epochs (default: the run's
    ``novel_epochs``) of as many draws as samples seen, at learning rate ``lr`` (default:
    the run's ``base_lr``: each session continues training the whole network on the whole
    history, as the base session did), cosine-annealed per session. The base session is
    the shared one.
    """

    cumulative = True
    balanced = True

    def __init__(self, epochs: int | None = None, lr: float | None = None):
        super().__init__()
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be > 0 or None, got {lr!r}")
        self.epochs, self.lr = _check_epochs(epochs), lr

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(novel_epochs=self.epochs, novel_lr=self.lr if self.lr is not None else base.base_lr)


@register_strategy("prototype")
class Prototype(StrategySpec):
    """Decoupled baseline (CEC family): freeze the base backbone, classify by class prototypes."""

    def __init__(self, replace_base: bool = True):
        super().__init__()
        self.replace_base = replace_base

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [PrototypeClassifierPlugin(freeze_after_base=True, replace_base=self.replace_base)]

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(novel_epochs=0)  # prototypes only: no gradient step after session 0
