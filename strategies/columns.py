"""Registered evaluation columns a config can request for every strategy (``columns:``).

``heldout_fewshot``: N-way K-shot accuracy on classes the stream never trains on (the
scenario's ``heldout`` pool, e.g. Omniglot evaluation characters the protocol leaves out),
after every session. It measures few-shot *generalisation* of the representation: episodes
are classified by cosine similarity to the support prototypes (no gradient step), with the
features of the strategy's slow weights when a plugin keeps them (a ``slow_weights(model)``
context manager, as :class:`~avalanche_fscl.plugins.FastSlowConsolidationPlugin` has) and
of the model otherwise. The episodes are fixed by ``seed``: every session and every strategy
sees the same ones.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from ..plugins._features import eval_mode
from .spec import EvalColumn, StrategyContext, register_column
from .template import FSCILStrategy

__all__ = ["HeldoutFewShotColumn", "heldout_fewshot"]


class HeldoutFewShotColumn(EvalColumn):
    """Mean N-way K-shot episode accuracy (fraction) on a held-out dataset.

    Args:
        dataset: held-out images (a ``TensorImageDataset`` of normalised float tensors or
            anything :func:`~avalanche_fscl.streams.few_shot_episodes` reads).
        n_way, k_shot, n_query, episodes: the episodes (``episodes`` >= 1).
        seed: fixes the episodes.
        batch_size: feature-extraction batch size.

    All held-out images are embedded once per evaluation, then every episode indexes
    the features: the cost is one forward pass over the pool.
    """

    def __init__(self, dataset: Any, n_way: int = 5, k_shot: int = 5, n_query: int = 15,
                 episodes: int = 200, seed: int = 0, batch_size: int = 512):
        from ..streams import few_shot_episodes

        self.episodes = few_shot_episodes(dataset, n_way, k_shot, n_query, episodes, seed=seed)
        self.dataset, self.batch_size = dataset, batch_size
        self.name = f"heldout_{n_way}w{k_shot}s"
        self.title = f"held-out {n_way}-way {k_shot}-shot"

    def _slow_context(self, strategy: FSCILStrategy):
        for plugin in strategy.plugins:
            fn = getattr(plugin, "slow_weights", None)
            if callable(fn):
                return fn(strategy.model)
        return contextlib.nullcontext(strategy.model)

    @torch.no_grad()
    def evaluate(self, strategy: FSCILStrategy, session: int) -> float:
        model, device = strategy.model, strategy.device
        with self._slow_context(strategy), eval_mode(model):
            xs = self.episodes._gather(torch.arange(len(self.dataset)).numpy())
            feats = torch.cat([model.features(xs[i:i + self.batch_size].to(device)).float()
                               for i in range(0, len(xs), self.batch_size)])
        feats = F.normalize(feats, dim=1)
        ep = self.episodes
        correct = total = 0
        for i in range(len(ep)):
            _, idx = ep.indices(i)
            idx = torch.as_tensor(idx, device=feats.device)  # (n_way, k_shot + n_query)
            support, query = feats[idx[:, : ep.k_shot]], feats[idx[:, ep.k_shot:]]
            protos = F.normalize(support.mean(1), dim=1)  # (n_way, D)
            pred = (query.reshape(-1, feats.shape[1]) @ protos.T).argmax(1)
            truth = torch.arange(ep.n_way, device=feats.device).repeat_interleave(ep.n_query)
            correct += int((pred == truth).sum())
            total += truth.numel()
        return correct / total


@register_column("heldout_fewshot")
def heldout_fewshot(ctx: StrategyContext, n_way: int = 5, k_shot: int = 5, n_query: int = 15,
                    episodes: int = 200, seed: int = 0) -> HeldoutFewShotColumn:
    """N-way K-shot accuracy on the scenario's held-out classes (``scenario.heldout``)."""
    pool = getattr(ctx.scenario, "heldout", None)
    if pool is None:
        raise ValueError(
            f"columns.heldout_fewshot: stream {ctx.config.stream.name} has no held-out classes "
            f"(scenario.heldout is None); streams with a held-out pool: omniglot_fscil, tiny_imagenet_fscil"
        )
    return HeldoutFewShotColumn(pool, n_way, k_shot, n_query, episodes, seed=seed)
