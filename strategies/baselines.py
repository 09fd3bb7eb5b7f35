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

__all__ = ["finetune", "ewc", "lwf", "replay", "ncm", "joint", "prototype"]


@register_strategy("finetune")
def finetune() -> list[SupervisedPlugin]:
    """Fine-tune everything on each session (Avalanche Naive): the forgetting lower bound."""
    return []


@register_strategy("ewc")
def ewc(ewc_lambda: float = 100.0) -> list[SupervisedPlugin]:
    """Fine-tuning + EWC penalty (Fisher importance of earlier sessions' weights)."""
    return [StatefulEWCPlugin(ewc_lambda=ewc_lambda)]


@register_strategy("lwf")
def lwf(alpha: float = 1.0, temperature: float = 2.0) -> list[SupervisedPlugin]:
    """Fine-tuning + Learning without Forgetting (distillation on the old classes' logits)."""
    return [StatefulLwFPlugin(alpha=alpha, temperature=temperature)]


@register_strategy("replay")
def replay(mem_per_class: int = 5, seed: int = 0) -> list[SupervisedPlugin]:
    """Fine-tuning with a class-balanced replay memory (mem_per_class samples per class)."""
    return [ClassBalancedReplayPlugin(mem_per_class=mem_per_class, seed=seed)]


@register_strategy("ncm")
def ncm(mem_per_class: int = 5, seed: int = 0) -> list[SupervisedPlugin]:
    """iCaRL-style: replay memory + nearest-class-mean classifier over normalised features."""
    memory = ClassBalancedReplayPlugin(mem_per_class=mem_per_class, seed=seed)
    return [memory, NCMClassifierPlugin(source="memory", replay=memory)]


@register_strategy("joint", cumulative=True)
def joint() -> list[SupervisedPlugin]:
    """Train each session on all training data seen so far: the upper bound."""
    return []


@register_strategy("prototype")
def prototype(replace_base: bool = True) -> list[SupervisedPlugin]:
    """Decoupled baseline (CEC family): freeze the base backbone, classify by class prototypes."""
    return [PrototypeClassifierPlugin(freeze_after_base=True, replace_base=replace_base)]
