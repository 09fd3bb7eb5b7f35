"""Ready-made strategies: a session-aware Avalanche template, the strategy contract and the
registered baselines.

``create_strategy(name, StrategyContext(scenario))`` builds any registered strategy;
``list_strategies()`` names them. Baselines: ``finetune``, ``ewc``, ``lwf``, ``replay``,
``ncm`` (iCaRL-style NCM with replay), ``joint`` (upper bound) and ``prototype``; methods:
``fscl`` (and its ablations ``fscl_no_step1``, ...), ``raml`` (``raml_external``, its
ablations ``raml_no_retrieval``, ... and the ``knn`` baseline), and over a frozen CLIP
``zeroshot_clip``, ``coop``, ``vpt`` and GRAM's ``gram_coop``, ``gram_vpt``, ``unigram``. A new
method subclasses :class:`StrategySpec` and registers it with :func:`register_strategy`
(the contract: :mod:`avalanche_fscl.strategies.spec`).
"""

from . import baselines as _baselines  # noqa: F401  (registers the baselines)
from . import columns as _columns  # noqa: F401  (registers the evaluation columns)
from . import fscl as _fscl  # noqa: F401  (registers fscl and its ablations)
from . import raml as _raml  # noqa: F401  (registers raml, its ablations and knn)
from . import clip as _clip  # noqa: F401  (registers zeroshot_clip, coop, vpt, gram_coop, gram_vpt, unigram)
from . import clip_features as _clip_features  # noqa: F401  (registers prototype_clip, knn_clip, raml_clip)
from .registry import (
    STRATEGIES,
    create_strategy,
    get_strategy,
    list_strategies,
    make_spec,
    register_strategy,
    register_variant,
)
from .spec import (
    COLUMNS,
    EvalColumn,
    StrategyContext,
    StrategySpec,
    create_column,
    register_column,
    require_state_dicts,
)
from .template import FSCILStrategy, SessionSchedule

__all__ = [
    "FSCILStrategy",
    "SessionSchedule",
    "StrategySpec",
    "StrategyContext",
    "EvalColumn",
    "STRATEGIES",
    "COLUMNS",
    "create_strategy",
    "get_strategy",
    "list_strategies",
    "make_spec",
    "register_strategy",
    "register_variant",
    "register_column",
    "create_column",
    "require_state_dicts",
]
