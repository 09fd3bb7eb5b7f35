"""Avalanche plugins for continual few-shot learning, and the FSCIL metrics.

Attach them to any Avalanche strategy: ``Naive(..., plugins=[...],
evaluator=EvaluationPlugin(*fscil_metrics(), loggers=[...]))``.
"""

from .fscil_metrics import FSCILMetric, FSCILSessionRow, FSCILTable, fscil_metrics

__all__ = ["fscil_metrics", "FSCILMetric", "FSCILTable", "FSCILSessionRow"]
