"""Retrieval: vector search behind one interface and a bounded retrieval memory.

- :func:`create_index` builds a :class:`VectorIndex`: ``"exact"`` (torch, CPU or CUDA),
  ``"flat"`` (FAISS exact), ``"ivf"`` (FAISS inverted file) or ``"hnsw"`` (FAISS graph).
- :class:`RetrievalMemory` keeps stream examples (reservoir-bounded per class and in
  total) and an external corpus, returns :class:`Neighbours`, and guards against stale
  embeddings after an encoder change (:class:`StaleMemoryError`).
"""

from .index import (
    INDEX_BACKENDS,
    METRICS,
    ExactIndex,
    FaissFlatIndex,
    FaissHNSWIndex,
    FaissIVFIndex,
    VectorIndex,
    create_index,
)
from .memory import SOURCES, Neighbours, RetrievalMemory, StaleMemoryError

__all__ = [
    "INDEX_BACKENDS",
    "METRICS",
    "SOURCES",
    "VectorIndex",
    "ExactIndex",
    "FaissFlatIndex",
    "FaissIVFIndex",
    "FaissHNSWIndex",
    "create_index",
    "RetrievalMemory",
    "Neighbours",
    "StaleMemoryError",
]
