"""Baseline strategies for few-shot class-incremental learning.

All share the model (an :class:`~avalanche_fscl.models.FSCILNet`) and the base-session
training, so the runner trains the base session once per seed and reuses it; they differ in
what happens afterwards.
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
from .template import NovelEpochsPlugin

__all__ = ["finetune", "ewc", "lwf", "replay", "ncm", "joint", "prototype"]


@register_strategy("finetune")
def finetune() -> list[SupervisedPlugin]:
    """Fine-tune everything on each session (Avalanche Naive): the forgetting lower bound."""
    return []


@register_strategy("ewc")
def ewc(ewc_lambda: float = 1.0) -> list[SupervisedPlugin]:
    """Fine-tuning + EWC penalty (Fisher importance of earlier sessions' weights).

    With plain SGD the penalty's curvature ``2 * ewc_lambda * F`` must stay below
    ``2 / lr``: on digits_fscil ``ewc_lambda >= 10`` at ``novel_lr=0.01`` diverges and the
    model collapses to one class, hence the small default.
    """
    return [StatefulEWCPlugin(ewc_lambda=ewc_lambda)]


@register_strategy("lwf")
def lwf(alpha: float = 1.0, temperature: float = 2.0) -> list[SupervisedPlugin]:
    """Fine-tuning + Learning without Forgetting (distillation on the old classes' logits)."""
    return [StatefulLwFPlugin(alpha=alpha, temperature=temperature)]


def _epochs(epochs: int | None) -> list[SupervisedPlugin]:
    return [] if epochs is None else [NovelEpochsPlugin(epochs)]


@register_strategy("replay")
def replay(mem_per_class: int = 5, seed: int = 0, epochs: int | None = None) -> list[SupervisedPlugin]:
    """Fine-tuning with a class-balanced replay memory (mem_per_class samples per class).

    ``epochs`` overrides the incremental sessions' epochs (each epoch also covers the memory).
    """
    return [ClassBalancedReplayPlugin(mem_per_class=mem_per_class, seed=seed), *_epochs(epochs)]


@register_strategy("ncm")
def ncm(mem_per_class: int = 5, seed: int = 0, epochs: int | None = None) -> list[SupervisedPlugin]:
    """iCaRL-style: replay memory + nearest-class-mean classifier over normalised features.

    ``epochs`` overrides the incremental sessions' epochs (each epoch also covers the memory).
    """
    memory = ClassBalancedReplayPlugin(mem_per_class=mem_per_class, seed=seed)
    return [memory, NCMClassifierPlugin(source="memory", replay=memory), *_epochs(epochs)]


@register_strategy("joint", cumulative=True)
def joint(epochs: int | None = None) -> list[SupervisedPlugin]:
    """Train each session on all training data seen so far: the upper bound.

    ``epochs`` overrides the incremental sessions' epochs (each re-trains on the base data).
    """
    return _epochs(epochs)


@register_strategy("prototype")
def prototype(replace_base: bool = True) -> list[SupervisedPlugin]:
    """Decoupled baseline (CEC family): freeze the base backbone, classify by class prototypes."""
    return [PrototypeClassifierPlugin(freeze_after_base=True, replace_base=replace_base)]
