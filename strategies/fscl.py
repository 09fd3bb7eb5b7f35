"""``fscl``: fast/slow weights with two-step consolidation, and its ablations.

The method lives in :class:`~avalanche_fscl.plugins.FastSlowConsolidationPlugin` (its
docstring says which parts follow the paper and which are this project's). The strategy
runs it on the run's :class:`~avalanche_fscl.models.FSCILNet` with the shared base session
(meta-learning happens at the end of session 0, after the standard training the baselines
share, so it is counted in ``fscl``'s base-session time).

Ablations, each a registered strategy (the hyper-parameters they fix are given; the rest
are ``fscl``'s and can be set in ``strategy_args``):

==========================  ===============================================  ==============================
strategy                    what is removed                                  fixed arguments
==========================  ===============================================  ==============================
``fscl_no_step1``           fast consolidation (penalty, fixed old rows,     ``fast_strength=0``
                            prototype-initialised new rows)
``fscl_no_step2``           slow consolidation                               ``slow_step=0``
``fscl_fast_only``          slow weights (and so meta-learning and step 2)   ``slow=None, meta=False,
                                                                             slow_step=0`` and no session
                                                                             meta-learning or restart
``fscl_slow_only``          fast learning: no gradient step after session 0  ``epochs=0`` (the FSCIL
                                                                             configs give it no rows)
``fscl_no_meta``            meta-learning of the slow weights, in the base   ``meta=False`` and no session
                            session and after every session                  meta-learning or restart
``fscl_no_session_meta``    the slow weights' meta-learning after every      ``session_meta_episodes=0``,
                            incremental session (the base session's kept)    ``session_meta_memory=0``,
                                                                             ``fast_from_slow=False``,
                                                                             ``row_steps=0`` (and no
                                                                             ``row_logit_adjust``)
``fscl_no_fast_from_slow``  the fast weights' restart from the slow ones     ``fast_from_slow=False``,
                            after every session                              ``row_steps=0`` (and no
                                                                             ``row_logit_adjust``)
``fscl_no_row_training``    the rows' training (on the memory after the      ``row_steps=0, row_memory=0``
                            restart, or on the stored features): they stay   (and no ``base_row_steps``,
                            prototypes                                       ``row_logit_adjust``)
==========================  ===============================================  ==============================

The rows' training on stored features (``row_memory``, the FSCIL streams' configs) is fast
learning, not meta-learning: ``fscl_no_meta`` and ``fscl_fast_only`` keep it when their
``strategy_args`` give it; the FSCIL configs give ``fscl_slow_only`` none (no fast learning at all).
"""

from __future__ import annotations

from typing import Any

from avalanche.core import SupervisedPlugin

from ..plugins import FastSlowConsolidationPlugin
from .registry import register_strategy, register_variant
from .spec import StrategyContext, StrategySpec
from .template import SessionSchedule

__all__ = ["FSCL"]


@register_strategy("fscl")
class FSCL(StrategySpec):
    """Fast/slow weights with two-step consolidation (FSCL, Wang et al. 2021; design partly ours).

    Arguments are :class:`~avalanche_fscl.plugins.FastSlowConsolidationPlugin`'s, plus
    ``epochs`` (incremental sessions' epochs; default: the run's ``novel_epochs``) and
    ``base_epochs`` (supervised epochs of the base session before meta-learning; default: the
    run's ``base_epochs``, so the base training is the baselines' and can be shared with them;
    fewer trades supervised epochs for meta-learning episodes within the baselines' budget).
    """

    def __init__(self, fast_strength: float = 1000.0, slow_step: float = 0.1, slow_strength: float = 1.0,
                 importance: str = "fisher", meta: bool = True, meta_episodes: int = 200,
                 meta_ways: int = 20, meta_shots: int = 5, meta_queries: int = 5,
                 meta_inner_steps: int = 1, meta_inner_lr: float = 0.05, meta_lr: float = 0.01,
                 first_order: bool = True, meta_scale: float = 10.0, meta_norm_stats: str = "episode",
                 meta_cache: bool = False, session_meta_episodes: int = 0, session_meta_lr: float = 0.003,
                 session_meta_memory: int = 0, fast_from_slow: bool = False, row_steps: int = 0, row_lr: float = 0.1, row_memory: int = 0,
                 row_logit_adjust: float | None = None,
                 base_row_steps: int | None = None,
                 meta_autocast: str | None = None, slow: str | list[str] | None = "backbone",
                 epochs: int | None = None, base_epochs: int | None = None, seed: int = 0):
        super().__init__()
        for name, v in (("epochs", epochs), ("base_epochs", base_epochs)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {v!r}")
        self.epochs, self.base_epochs = epochs, base_epochs
        self.plugin_args = dict(
            slow=slow, fast_strength=fast_strength, slow_step=slow_step, slow_strength=slow_strength,
            importance=importance, meta=meta, meta_episodes=meta_episodes, meta_ways=meta_ways,
            meta_shots=meta_shots, meta_queries=meta_queries, meta_inner_steps=meta_inner_steps,
            meta_inner_lr=meta_inner_lr, meta_lr=meta_lr, first_order=first_order, meta_scale=meta_scale,
            meta_norm_stats=meta_norm_stats, meta_cache=meta_cache, session_meta_episodes=session_meta_episodes,
            session_meta_lr=session_meta_lr, session_meta_memory=session_meta_memory,
            fast_from_slow=fast_from_slow, row_steps=row_steps, row_lr=row_lr, row_memory=row_memory, base_row_steps=base_row_steps,
            row_logit_adjust=row_logit_adjust, meta_autocast=meta_autocast, seed=seed,
        )
        FastSlowConsolidationPlugin(**self.plugin_args)  # bad values fail here, before any output

    def plugins(self, ctx: StrategyContext) -> list[SupervisedPlugin]:
        return [FastSlowConsolidationPlugin(**self.plugin_args)]

    def schedule(self, base: SessionSchedule) -> SessionSchedule:
        return base.replace(novel_epochs=self.epochs, base_epochs=self.base_epochs)

    def base_session_key(self, ctx: StrategyContext) -> dict[str, Any] | None:
        # SI integrates the training path: a base session loaded from the cache has none
        return None if self.plugin_args["importance"] == "si" else super().base_session_key(ctx)


register_variant(FSCL, "fscl_no_step1", "FSCL ablation: no fast consolidation (step 1).", fast_strength=0.0)
register_variant(FSCL, "fscl_no_step2", "FSCL ablation: no slow consolidation (step 2).", slow_step=0.0)
register_variant(FSCL, "fscl_fast_only", "FSCL ablation: fast weights only (no slow weights, meta-learning or step 2).",
                 slow=None, meta=False, slow_step=0.0, session_meta_episodes=0, session_meta_memory=0, fast_from_slow=False)
register_variant(FSCL, "fscl_slow_only", "FSCL ablation: slow weights only (no gradient step after the base session).", epochs=0)
register_variant(FSCL, "fscl_no_meta", "FSCL ablation: no meta-learning of the slow weights.", meta=False,
                 session_meta_episodes=0, session_meta_memory=0, fast_from_slow=False)
register_variant(FSCL, "fscl_no_session_meta", "FSCL ablation: no slow-weight meta-learning after the base session.",
                 session_meta_episodes=0, session_meta_memory=0, fast_from_slow=False, row_steps=0, row_logit_adjust=None)
register_variant(FSCL, "fscl_no_fast_from_slow", "FSCL ablation: fast weights not restarted from the slow ones after each session.",
                 fast_from_slow=False, row_steps=0, row_logit_adjust=None)
register_variant(FSCL, "fscl_no_row_training", "FSCL ablation: the rows stay prototypes (row_steps=0, row_memory=0).",
                 row_steps=0, row_memory=0, base_row_steps=None, row_logit_adjust=None)
