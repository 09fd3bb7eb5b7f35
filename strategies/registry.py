"""Strategies by name: the runner, ``avalanche-fscl list`` and Python users share this registry.

A registered strategy is a :class:`~avalanche_fscl.strategies.StrategySpec` subclass (the
contract, with what a strategy may supply and what the runner does with it, is in
:mod:`avalanche_fscl.strategies.spec`). A method adds itself with one entry::

    @register_strategy("fscl")
    class FSCL(StrategySpec):
        \"\"\"Fast/slow weights with two-step consolidation.\"\"\"
        ...

and ``avalanche-fscl run --strategy fscl`` and ``avalanche-fscl list`` pick it up without any
change to the runner. From Python::

    from avalanche_fscl.strategies import StrategyContext, create_strategy
    strategy = create_strategy("ewc", StrategyContext(scenario), strategy_args={"ewc_lambda": 1.0})
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from .. import _register
from .spec import StrategyContext, StrategySpec
from .template import FSCILStrategy, SessionSchedule

__all__ = [
    "STRATEGIES",
    "register_strategy",
    "register_variant",
    "list_strategies",
    "get_strategy",
    "make_spec",
    "create_strategy",
]

S = TypeVar("S", bound=type[StrategySpec])
STRATEGIES: dict[str, type[StrategySpec]] = {}


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: register a :class:`StrategySpec` subclass under ``name``.

    Its docstring's first line becomes the summary shown by ``avalanche-fscl list``.
    """

    def deco(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, StrategySpec)):
            raise TypeError(f"register_strategy({name!r}) decorates a StrategySpec subclass, got {cls!r}")
        _register(STRATEGIES, "strategy", name)(cls)
        cls.name = name
        cls.summary = (cls.__doc__ or name).strip().splitlines()[0]
        return cls

    return deco


def register_variant(base: type[StrategySpec], name: str, summary: str, **fixed: Any) -> type[StrategySpec]:
    """Register ``base`` under ``name`` with some constructor arguments fixed (an ablation).

    The fixed arguments leave the variant's hyper-parameter list (a config that sets one is
    an error naming the allowed ones); ``summary`` is its ``avalanche-fscl list`` line.
    """
    sig = inspect.signature(base.__init__)
    unknown = sorted(set(fixed) - set(sig.parameters))
    if unknown:
        raise TypeError(f"register_variant({name!r}): {base.__name__} has no arguments {unknown}")

    def __init__(self, **kwargs: Any):
        base.__init__(self, **{**kwargs, **fixed})

    __init__.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n not in fixed])
    cls = type(name, (base,), {"__init__": __init__, "__doc__": f"{summary}\n\nFixed: {fixed}.",
                               "__module__": base.__module__})
    return register_strategy(name)(cls)


def list_strategies() -> dict[str, str]:
    """``{name: summary}`` of every registered strategy."""
    return {n: c.summary for n, c in sorted(STRATEGIES.items())}


def get_strategy(name: str) -> type[StrategySpec]:
    """The registered class ``name``; unknown names list the allowed ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def make_spec(name: str, strategy_args: Mapping[str, Any] | None = None, *, seed: int | None = None) -> StrategySpec:
    """Strategy ``name`` with its hyper-parameters; ``seed`` fills a ``seed`` argument not given.

    Raises:
        ValueError: unknown strategy or hyper-parameter (the message lists the allowed ones),
            or a value the strategy rejects.
    """
    cls = get_strategy(name)
    args = dict(strategy_args or {})
    allowed = cls.hyperparameters()
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(
            f"strategy_args.{name}.{unknown[0]}: unknown hyper-parameter; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    if seed is not None and "seed" in allowed:
        args.setdefault("seed", seed)
    spec = cls(**args)
    spec.hparams = {**allowed, **args}
    return spec


def create_strategy(
    name: str | StrategySpec,
    context: StrategyContext,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: SessionSchedule | None = None,
    strategy_args: Mapping[str, Any] | None = None,
    plugins: Sequence[SupervisedPlugin] = (),
    spec_plugins: Sequence[SupervisedPlugin] | None = None,
    **template_kwargs: Any,
) -> FSCILStrategy:
    """An :class:`FSCILStrategy` running strategy ``name`` (or a ready :class:`StrategySpec`).

    Args:
        name: a registered strategy (see :func:`list_strategies`) or a spec object.
        context: the scenario, config (``config.train``: optimizer settings and schedule;
            ``config.model``: the default network), seed and device the strategy reads.
        model: the network; default: the strategy's :meth:`~StrategySpec.build_model`.
        optimizer: default: the strategy's :meth:`~StrategySpec.make_optimizer`.
        schedule: the run's schedule (default: from ``context.config.train``); the
            strategy adapts it
            (:meth:`~StrategySpec.schedule`).
        strategy_args: hyper-parameters (e.g. ``{"ewc_lambda": 100}``).
        plugins: extra plugins, run before the strategy's own.
        spec_plugins: the strategy's own plugins if already built (the runner keeps them to
            checkpoint their state); default: ``spec.plugins(context)``.
        template_kwargs: ``train_mb_size``, ``eval_mb_size``, ``device``, ``evaluator``, ...
    """
    if not isinstance(context, StrategyContext):
        raise TypeError(f"context must be a StrategyContext(scenario, ...), got {type(context).__name__}")
    spec = name if isinstance(name, StrategySpec) else make_spec(name, strategy_args, seed=context.seed)
    if model is None:
        model = spec.build_model(context)
    if optimizer is None:
        optimizer = spec.make_optimizer(model, context)
    template_kwargs.setdefault("device", context.device)
    return FSCILStrategy(
        model=model,
        optimizer=optimizer,
        schedule=spec.schedule(schedule or context.run_schedule()),
        plugins=[*plugins, *(spec.plugins(context) if spec_plugins is None else spec_plugins)],
        cumulative=spec.cumulative,
        balanced=spec.balanced,
        **template_kwargs,
    )
