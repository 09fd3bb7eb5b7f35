"""Avalanche plugins for continual few-shot learning, and the FSCIL metrics.

Attach them to any Avalanche strategy: ``Naive(..., plugins=[...],
evaluator=EvaluationPlugin(*fscil_metrics(), loggers=[...]))``.

Every plugin has ``state_dict()`` / ``load_state_dict(state)`` (tensors, python scalars,
strings, lists, dicts and ``None`` only: ``torch.load(..., weights_only=True)`` reads them),
so a run checkpointed after a session and resumed with fresh objects continues exactly.

- :class:`StatefulEWCPlugin`, :class:`StatefulLwFPlugin`: Avalanche's EWC and LwF with state.
- :class:`ClassBalancedReplayPlugin`: seeded class-balanced tensor memory, replayed.
- :class:`NCMClassifierPlugin`: iCaRL's nearest-class-mean classifier at evaluation.
- :class:`PrototypeClassifierPlugin`: frozen base backbone + prototype classifier (CEC family).
- :class:`FastSlowConsolidationPlugin`: FSCL, fast/slow weights with two-step consolidation.
- :class:`RetrievalAugmentedPlugin`: RAML, prototypes + multi-view fusion over a retrieval memory.
- :class:`GRAMPlugin`: GRAM, meta-learned prompt init + gradient regulator for CLIP prompt tuning.
- :func:`extract_features`, :func:`class_mean_features`: batched, no-grad feature helpers.
"""

from ._features import class_mean_features, extract_features
from .ewc import StatefulEWCPlugin
from .fast_slow import FastSlowConsolidationPlugin
from .gram import GRAMPlugin
from .fscil_metrics import FSCILMetric, FSCILSessionRow, FSCILTable, fscil_metrics
from .lwf import StatefulLwFPlugin
from .ncm import NCMClassifierPlugin
from .prototype import PrototypeClassifierPlugin
from .replay import ClassBalancedReplayPlugin
from .retrieval import RetrievalAugmentedPlugin

__all__ = [
    "fscil_metrics",
    "FSCILMetric",
    "FSCILTable",
    "FSCILSessionRow",
    "StatefulEWCPlugin",
    "StatefulLwFPlugin",
    "ClassBalancedReplayPlugin",
    "NCMClassifierPlugin",
    "PrototypeClassifierPlugin",
    "FastSlowConsolidationPlugin",
    "RetrievalAugmentedPlugin",
    "GRAMPlugin",
    "extract_features",
    "class_mean_features",
]
