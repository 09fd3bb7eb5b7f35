"""Strategies by name: each entry turns keyword hyper-parameters into Avalanche plugins.

The benchmark runner and Python users share this registry::

    from avalanche_fscl.strategies import create_strategy
    strategy = create_strategy("ewc", model=model, optimizer=opt, strategy_args={"ewc_lambda": 100})

A method issue adds its strategy with ``@register_strategy("name")`` and the runner and
``avalanche-fscl list`` pick it up.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from .template import FSCILStrategy, SessionSchedule

__all__ = [
    "StrategyEntry",
    "STRATEGIES",
    "register_strategy",
    "list_strategies",
    "strategy_plugins",
    "create_strategy",
]

PluginFactory = Callable[..., list[SupervisedPlugin]]


@dataclass(frozen=True)
class StrategyEntry:
    """A registered strategy.

    Attributes:
        name: registry name.
        factory: keyword hyper-parameters -> the strategy's plugins.
        summary: one line for ``avalanche-fscl list``.
        cumulative: trains each session on all data seen so far (``joint``).
        base_training: strategies with equal values train the base session identically
            and share one cached base-session checkpoint.
    """

    name: str
    factory: PluginFactory
    summary: str
    cumulative: bool = False
    base_training: str = "standard"

    def hyperparameters(self) -> dict[str, Any]:
        """``{argument: default}`` of the factory."""
        return {
            n: p.default for n, p in inspect.signature(self.factory).parameters.items()
        }


STRATEGIES: dict[str, StrategyEntry] = {}


def register_strategy(
    name: str, *, cumulative: bool = False, base_training: str = "standard"
) -> Callable[[PluginFactory], PluginFactory]:
    """Decorator: register a plugin factory under ``name``; its docstring's first line is the summary."""

    def deco(factory: PluginFactory) -> PluginFactory:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        summary = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else name
        STRATEGIES[name] = StrategyEntry(name, factory, summary, cumulative, base_training)
        return factory

    return deco


def list_strategies() -> dict[str, str]:
    """``{name: summary}`` of every registered strategy."""
    return {n: e.summary for n, e in sorted(STRATEGIES.items())}


def get_entry(name: str) -> StrategyEntry:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def strategy_plugins(name: str, **strategy_args: Any) -> list[SupervisedPlugin]:
    """The plugins of strategy ``name``; unknown hyper-parameters raise ``ValueError``."""
    entry = get_entry(name)
    allowed = entry.hyperparameters()
    unknown = sorted(set(strategy_args) - set(allowed))
    if unknown:
        raise ValueError(
            f"strategy {name!r} has no hyper-parameter {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    return entry.factory(**strategy_args)


def create_strategy(
    name: str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: SessionSchedule | None = None,
    strategy_args: Mapping[str, Any] | None = None,
    plugins: Sequence[SupervisedPlugin] = (),
    **template_kwargs: Any,
) -> FSCILStrategy:
    """An :class:`FSCILStrategy` running strategy ``name``.

    Args:
        name: a registered strategy (see :func:`list_strategies`).
        model, optimizer, schedule: as for :class:`FSCILStrategy`.
        strategy_args: the strategy's hyper-parameters (e.g. ``{"ewc_lambda": 100}``).
        plugins: extra plugins, run before the strategy's own.
        template_kwargs: ``train_mb_size``, ``eval_mb_size``, ``device``, ``evaluator``, ...
    """
    entry = get_entry(name)
    own = strategy_plugins(name, **dict(strategy_args or {}))
    return FSCILStrategy(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        plugins=[*plugins, *own],
        cumulative=entry.cumulative,
        **template_kwargs,
    )
