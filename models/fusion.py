"""Multi-view fusion head of RAML: class prototypes attend over each (query, neighbour) view.

Follows the official RAML code's fusion (Li et al. 2023, arXiv 2309.04979): every query is
paired with each retrieved item, one "view" per item; one cross-attention layer takes the
class prototypes as queries and the view as keys/values; a scoring layer gives one score per
class and view; scores are averaged over views. Ours (the paper works on text tokens): a view
is two embedding tokens, ``[query, neighbour]``, so the attention has a closed form and the
head never materialises a ``(B, V, C, D)`` tensor (memory ``O(B * V * C * heads)``); the
per-class score is a bilinear form between the attended view and the class prototype, so one
head serves any number of classes (classes can be added session by session); the optional
``"attention"`` fusion weights views by query-neighbour similarity instead of averaging; a
labelled neighbour (the stream's own memory) can carry its label into its view, as its class
prototype added to its token (``labels=True``), since a bare neighbour embedding close to the
query says little the query does not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiViewFusionHead", "FUSIONS"]

FUSIONS = ("mean", "attention")


class MultiViewFusionHead(nn.Module):
    """Per-class scores ``(B, C)`` from prototypes, queries and their retrieved neighbours.

    For a query ``q``, neighbours ``n_1..n_V`` and class prototypes ``p_c`` (all
    L2-normalised first), view ``v`` is the token pair ``t = [q + e_q, n_v + e_n]`` (``e_*``:
    learned type embeddings; with ``labels=True`` a neighbour labelled ``y`` adds ``Wl p_y``). In every attention head ``h``, prototype ``c`` attends over the
    two tokens::

        a[c, t]  = softmax_t( <Wq p_c, Wk t> / sqrt(d_h) )
        o[v, c]  = Wo concat_h( sum_t a[c, t] Wv t )                 (D,)
        s[v, c]  = <o[v, c], Wu p_c>                                 per-view class score

    and the fused score is ``scale * sum_v w_v s[v, c]`` with ``w_v = 1/V`` over the views
    that exist (``fusion="mean"``, RAML) or ``softmax_v(cos(q, n_v) / tau)``
    (``fusion="attention"``; ``tau`` learned). The projections start as the identity and
    ``Wo`` at zero, so an untrained head scores every class 0 (a classifier that adds it to
    prototype logits starts as the plain prototype classifier) and its first gradient steps
    already see which token matches which prototype.

    Args:
        dim: embedding size ``D`` of prototypes, queries and neighbours.
        heads: attention heads (``dim`` must be divisible by it).
        fusion: ``"mean"`` (average over views) or ``"attention"``.
        scale: initial value of the learned output scale (logit units per unit score).
        labels: let labelled neighbours carry their class prototype into their view.
    """

    def __init__(self, dim: int, heads: int = 4, fusion: str = "mean", scale: float = 10.0, labels: bool = False):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if not isinstance(heads, int) or heads < 1 or dim % heads:
            raise ValueError(f"heads must be an integer >= 1 that divides dim={dim}, got {heads!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}: allowed {', '.join(map(repr, FUSIONS))}")
        self.dim, self.heads, self.fusion, self.labels = dim, heads, fusion, labels
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.u = nn.Linear(dim, dim, bias=False)
        self.label_proj = nn.Linear(dim, dim, bias=False) if labels else None
        # identity projections: at the start a class attends to the token most similar to its
        # prototype (a neighbour's label prototype counts), and Wo = 0 makes every score 0
        for lin in (self.q, self.k, self.v, self.u, self.label_proj):
            if lin is not None:
                nn.init.eye_(lin.weight)
        nn.init.zeros_(self.o.weight)
        self.type_embed = nn.Parameter(torch.zeros(2, dim))  # row 0: query token, row 1: neighbour token
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.1)))

    def forward(self, prototypes: Tensor, queries: Tensor, neighbours: Tensor, mask: Tensor | None = None,
                neighbour_labels: Tensor | None = None, label_prototypes: Tensor | None = None) -> Tensor:
        """Fused class scores.

        Args:
            prototypes: ``(C, D)`` class prototypes (row ``c`` = class ``c``'s column).
            queries: ``(B, D)`` query embeddings.
            neighbours: ``(B, V, D)`` retrieved embeddings, one view each.
            mask: ``(B, V)`` bool, True where neighbour ``v`` exists (default: all). A query
                without any neighbour scores 0 for every class.
            neighbour_labels: ``(B, V)`` long, the row of each neighbour's class in
                ``label_prototypes``, -1 for none (unlabelled, or a class without a
                prototype); read only when the head was built with ``labels=True``.
            label_prototypes: ``(L, D)`` prototypes of the neighbours' classes (default:
                ``prototypes``). Episodic training passes every base class here, so that a
                neighbour of a class outside the episode still carries its label, as at
                evaluation, where every stored class has a prototype.

        Returns:
            ``(B, C)`` scores, in the dtype of the head's parameters.
        """
        B, V, D = neighbours.shape
        if prototypes.dim() != 2 or queries.dim() != 2 or prototypes.shape[1] != D or queries.shape != (B, D):
            raise ValueError(
                f"shape mismatch: prototypes {tuple(prototypes.shape)} must be (C, {D}), queries "
                f"{tuple(queries.shape)} must be ({B}, {D}) for neighbours {tuple(neighbours.shape)}"
            )
        if D != self.dim:
            raise ValueError(f"dimension mismatch: the head has dim={self.dim}, embeddings have {D}")
        if mask is None:
            mask = torch.ones(B, V, dtype=torch.bool, device=neighbours.device)
        dtype = self.q.weight.dtype
        p = F.normalize(prototypes.to(dtype), dim=-1)
        tq = F.normalize(queries.to(dtype), dim=-1) + self.type_embed[0]  # (B, D)
        tn = F.normalize(neighbours.to(dtype), dim=-1) + self.type_embed[1]  # (B, V, D)
        if self.label_proj is not None and neighbour_labels is not None:
            lp = p if label_prototypes is None else F.normalize(label_prototypes.to(dtype), dim=-1)
            y = neighbour_labels.to(tn.device).long()
            known = ((y >= 0) & (y < len(lp))).unsqueeze(-1)
            tn = tn + known * self.label_proj(lp)[y.clamp(0, len(lp) - 1)]
        H, dh = self.heads, D // self.heads
        Q = self.q(p).view(-1, H, dh)  # (C, H, dh)
        kq, kn = self.k(tq).view(B, H, dh), self.k(tn).view(B, V, H, dh)
        # attention logit of each class on the query token and on each neighbour token
        aq = torch.einsum("chd,bhd->bhc", Q, kq) / math.sqrt(dh)  # (B, H, C)
        an = torch.einsum("chd,bvhd->bvhc", Q, kn) / math.sqrt(dh)  # (B, V, H, C)
        alpha = torch.sigmoid(aq.unsqueeze(1) - an)  # weight on the query token (2-way softmax)
        # per-head contribution of each token's value to each class score: <Wo_h Wv_h t, Wu p_c>
        Wo = self.o.weight.view(D, H, dh)  # columns of Wo grouped by head
        M = torch.einsum("ehd,ce->chd", Wo, self.u(p))  # (C, H, dh): Wo_h^T Wu p_c
        gq = torch.einsum("bhd,chd->bhc", self.v(tq).view(B, H, dh), M)  # (B, H, C)
        gn = torch.einsum("bvhd,chd->bvhc", self.v(tn).view(B, V, H, dh), M)  # (B, V, H, C)
        per_view = (alpha * gq.unsqueeze(1) + (1 - alpha) * gn).sum(2)  # (B, V, C)
        w = self.view_weights(queries, neighbours, mask).to(dtype)  # (B, V)
        return self.log_scale.exp() * torch.einsum("bv,bvc->bc", w, per_view)

    def view_weights(self, queries: Tensor, neighbours: Tensor, mask: Tensor) -> Tensor:
        """``(B, V)`` fusion weights: uniform over existing views, or their attention."""
        if self.fusion == "mean":
            w = mask.float()
        else:
            sim = torch.einsum("bd,bvd->bv", F.normalize(queries.float(), dim=-1), F.normalize(neighbours.float(), dim=-1))
            w = torch.softmax((sim / self.log_tau.exp().float()).masked_fill(~mask, -1e4), dim=1) * mask
        return w / w.sum(1, keepdim=True).clamp_min(1e-12)
