"""``raml``: retrieval-augmented prototypes with multi-view fusion, its ablations, and ``knn``.

The method lives in :class:`~avalanche_fscl.plugins.RetrievalAugmentedPlugin` (its
docstring says which parts follow the paper and which are this project's). Every strategy
here shares the baselines' supervised base session; ``raml``'s episodic meta-training runs
at the end of session 0, so it is counted in its base-session time. No gradient step
after session 0 (like ``prototype``).

=====================  ==========================================================  ==============================
strategy               what it is                                                  fixed arguments
=====================  ==========================================================  ==============================
``raml``               prototypes + fusion head + class-balanced kNN vote over     ``memory="stream"``
                       the stream's own memory
``raml_external``      ``raml`` whose memory also holds the stream's external      ``memory="stream+external"``
                       corpus (``scenario.external``)
``raml_no_retrieval``  ablation: the meta-trained encoder, prototypes only         ``fusion=None, vote_weight=0``
``raml_no_meta``       ablation: the base encoder frozen, only the head trained    ``train_encoder=False``
``raml_label_views``   variant: labelled neighbours carry their class prototype     ``label_views=True``
                       into their view (ours; not better on validation)
``raml_vote``          ablation: no fusion head (prototypes + vote)                ``fusion=None``
``raml_no_vote``       ablation: no vote (prototypes + fusion head, the paper's)   ``vote_weight=0``
``knn``                baseline: similarity-weighted k-nearest-neighbour vote      (see :class:`KNN`)
                       over the stream memory, base encoder
``knn_balanced``       ``knn`` with each vote divided by its class's size          ``balanced=True``
=====================  ==========================================================  ==============================
"""

from __future__ import annotations

from typing import Any

from avalanche.core import SupervisedPlugin

from ..plugins import RetrievalAugmentedPlugin
from .registry import register_strategy, register_variant
from .spec import StrategyContext, StrategySpec
from .template import SessionSchedule

__all__ = ["RAML", "KNN", "MEMORIES"]

MEMORIES = ("stream", "stream+external")


@register_strategy("raml")
class RAML(StrategySpec):
    """Retrieval-augmented meta-learning (RAML, Li et al. 2023; design partly ours): prototypes + multi-view fusion + kNN vote.

    Arguments are :class:`~avalanche_fscl.plugins.RetrievalAugmentedPlugin`'s, plus
    ``memory``: ``"stream"`` (the stream's own training examples) or ``"stream+external"``
    (and the stream's external corpus, ``scenario.external``; an error if it has none).
    """

    def __init__(self, k: int = 5, fusion: str | None = "mean", heads: int = 4, label_views: bool = False,
                 prototype_weight: float = 1.0,
                 vote_weight: float = 1.0, balanced_vote: bool = True, memory: str = "stream", backend: str = "exact",
                 per_class_cap: int | None = None, max_size: int | None = None, meta_episodes: int = 300,
                 meta_ways: int = 20, meta_shots: int = 5, meta_queries: int = 5, meta_lr: float = 0.01,
                 head_lr: float = 1e-3, train_encoder: bool = True, meta_params: str | list[str] | None = None,
                 meta_cache: bool = False, meta_cache_views: int = 1, refresh_every: int = 50, seed: int = 0):
        super().__init__()
        if memory not in MEMORIES:
            raise ValueError(f"memory={memory!r}: allowed {', '.join(map(repr, MEMORIES))}")
        self.memory = memory
        self.plugin_args = dict(
            k=k, fusion=fusion, heads=heads, label_views=label_views, prototype_weight=prototype_weight, vote_weight=vote_weight,
            balanced_vote=balanced_vote,
            backend=backend, per_class_cap=per_class_cap, max_size=max_size, meta_episodes=meta_episodes,
            meta_ways=meta_ways, meta_shots=meta_shots, meta_queries=meta_queries, meta_lr=meta_lr,
            head_lr=head_lr, train_encoder=train_encoder, meta_params=meta_params, meta_cache=meta_cache,
            meta_cache_views=meta_cache_views, refresh_every=refresh_every, seed=seed,
        )
        RetrievalAugmentedPlugin(**self.plugin_args)  # bad values fail here, before any output

    def check(self, ctx: StrategyContext) -> None:
        if self.memory == "stream+external" and not ctx.scenario.has_external:
            raise ValueError(
                f"memory='stream+external' but the stream {ctx.config.stream.name!r} has no external "
                "corpus (scenario.external is None); use memory='stream'")

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        self.check(ctx)
        external = ctx.scenario.external if self.memory == "stream+external" else None
        return [RetrievalAugmentedPlugin(external=external, **self.plugin_args)]

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(novel_epochs=0)  # prototypes and memory only after session 0


@register_strategy("knn")
class KNN(StrategySpec):
    """Baseline: similarity-weighted k-nearest-neighbour vote over the stream memory (base encoder frozen).

    Every training example of every session is stored (embedded by the encoder frozen after
    the shared base session); a query's class is the label with the largest sum of cosine
    similarities among its ``k`` nearest neighbours (``balanced=True``: each divided by the
    number of stored examples of its class, see ``RetrievalAugmentedPlugin``).
    """

    def __init__(self, k: int = 5, balanced: bool = False, backend: str = "exact", per_class_cap: int | None = None,
                 seed: int = 0):
        super().__init__()
        self.plugin_args = dict(k=k, fusion=None, prototype_weight=0.0, vote_weight=1.0, balanced_vote=balanced,
                                meta_episodes=0, backend=backend, per_class_cap=per_class_cap, seed=seed)
        RetrievalAugmentedPlugin(**self.plugin_args)

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [RetrievalAugmentedPlugin(**self.plugin_args)]

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(novel_epochs=0)


register_variant(KNN, "knn_balanced", "Baseline: k-nearest-neighbour vote, each vote divided by its class's size in the memory.",
                 balanced=True)
register_variant(RAML, "raml_external", "RAML whose memory also holds the stream's external corpus (classes never in the stream).",
                 memory="stream+external")
register_variant(RAML, "raml_no_retrieval", "RAML ablation: the meta-trained encoder with prototypes only (no retrieval).",
                 fusion=None, vote_weight=0.0)
register_variant(RAML, "raml_no_meta", "RAML ablation: the base encoder stays as trained; only the fusion head is meta-trained.",
                 train_encoder=False)
register_variant(RAML, "raml_label_views", "RAML variant: labelled neighbours carry their class prototype into their view (ours).",
                 label_views=True)
register_variant(RAML, "raml_vote", "RAML ablation: no fusion head (prototypes + the class-balanced kNN vote).",
                 fusion=None)
register_variant(RAML, "raml_no_vote", "RAML ablation: no kNN vote (prototypes + the fusion head: the paper's classifier).",
                 vote_weight=0.0)
