"""Ready-made strategies: a session-aware Avalanche template and registered baselines.

``create_strategy(name, model=..., optimizer=...)`` builds any registered strategy;
``list_strategies()`` names them. Baselines: ``finetune``, ``ewc``, ``lwf``, ``replay``,
``ncm`` (iCaRL-style NCM with replay), ``joint`` (upper bound) and ``prototype``.
"""

from . import baselines as _baselines  # noqa: F401  (registers the baselines)
from .registry import (
    STRATEGIES,
    StrategyEntry,
    create_strategy,
    list_strategies,
    register_strategy,
    strategy_plugins,
)
from .template import FSCILStrategy, NovelEpochsPlugin, SessionSchedule

__all__ = [
    "FSCILStrategy",
    "SessionSchedule",
    "NovelEpochsPlugin",
    "StrategyEntry",
    "STRATEGIES",
    "create_strategy",
    "list_strategies",
    "register_strategy",
    "strategy_plugins",
]
