"""MultiViewFusionHead: shapes, the hand computation of per-view scores averaged over views,
masking, the attention fusion and its argument errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from avalanche_fscl.models import MultiViewFusionHead


def _trained_like(dim=16, heads=4, fusion="mean", seed=0):
    torch.manual_seed(seed)
    head = MultiViewFusionHead(dim, heads=heads, fusion=fusion)
    with torch.no_grad():  # an untrained head scores 0 (Wo = 0): give every weight a value
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return head


def _by_hand(head, P, q, n, mask=None):
    """Loop over queries and views with an explicit 2-token softmax attention per head."""
    B, V, D = n.shape
    H, dh = head.heads, D // head.heads
    p = F.normalize(P, dim=-1)
    out = torch.zeros(B, P.shape[0])
    for b in range(B):
        scores, weights = [], []
        for v in range(V):
            if mask is not None and not mask[b, v]:
                continue
            tokens = torch.stack([F.normalize(q[b], dim=-1) + head.type_embed[0],
                                  F.normalize(n[b, v], dim=-1) + head.type_embed[1]])
            Q, K, Vv = head.q(p).view(-1, H, dh), head.k(tokens).view(2, H, dh), head.v(tokens).view(2, H, dh)
            att = torch.softmax(torch.einsum("chd,thd->cht", Q, K) / math.sqrt(dh), dim=-1)
            attended = head.o(torch.einsum("cht,thd->chd", att, Vv).reshape(-1, D))  # (C, D)
            scores.append((attended * head.u(p)).sum(-1))
            weights.append(F.cosine_similarity(q[b], n[b, v], dim=0) / head.log_tau.exp())
        if not scores:
            continue
        w = torch.full((len(scores),), 1 / len(scores)) if head.fusion == "mean" else torch.softmax(torch.stack(weights), 0)
        out[b] = (w[:, None] * torch.stack(scores)).sum(0)
    return head.log_scale.exp() * out


@pytest.mark.parametrize("fusion", ["mean", "attention"])
def test_per_view_scores_averaged_match_a_hand_computation(fusion):
    head = _trained_like(fusion=fusion)
    torch.manual_seed(1)
    P, q, n = torch.randn(7, 16), torch.randn(3, 16), torch.randn(3, 4, 16)
    got = head(P, q, n)
    assert got.shape == (3, 7)
    torch.testing.assert_close(got, _by_hand(head, P, q, n), rtol=1e-5, atol=1e-5)


def test_masked_views_are_left_out_and_a_query_without_neighbours_scores_zero():
    head = _trained_like()
    torch.manual_seed(2)
    P, q, n = torch.randn(5, 16), torch.randn(3, 16), torch.randn(3, 4, 16)
    mask = torch.tensor([[True, False, True, False], [True, True, True, True], [False] * 4])
    got = head(P, q, n, mask)
    torch.testing.assert_close(got, _by_hand(head, P, q, n, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], head(P, q[:1], n[:1, [0, 2]])[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[2], torch.zeros(5))


def test_untrained_head_scores_zero_and_classes_can_grow():
    torch.manual_seed(0)
    head = MultiViewFusionHead(8, heads=2)
    q, n = torch.randn(4, 8), torch.randn(4, 3, 8)
    assert torch.equal(head(torch.randn(6, 8), q, n), torch.zeros(4, 6))
    head = _trained_like(8, 2)
    P = torch.randn(6, 8)
    small, grown = head(P[:4], q, n), head(P, q, n)  # a new session adds prototypes
    assert grown.shape == (4, 6)
    torch.testing.assert_close(grown[:, :4], small)  # old classes' scores do not depend on new ones


def test_gradients_reach_every_parameter():
    head = _trained_like(fusion="attention")
    head(torch.randn(5, 16), torch.randn(3, 16), torch.randn(3, 2, 16)).logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "dim must be an integer >= 1"),
        (dict(dim=10, heads=3), "heads must be an integer >= 1 that divides dim=10"),
        (dict(dim=8, fusion="max"), "fusion='max': allowed 'mean', 'attention'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiViewFusionHead(**kwargs)


def test_shape_and_dimension_mismatches_are_errors():
    head = MultiViewFusionHead(8, heads=2)
    with pytest.raises(ValueError, match="shape mismatch"):
        head(torch.randn(3, 8), torch.randn(2, 8), torch.randn(4, 2, 8))
    with pytest.raises(ValueError, match="dimension mismatch: the head has dim=8, embeddings have 6"):
        head(torch.randn(3, 6), torch.randn(2, 6), torch.randn(2, 2, 6))


@pytest.mark.cuda
def test_fusion_head_on_cuda_matches_cpu():
    head = _trained_like()
    P, q, n = torch.randn(9, 16), torch.randn(5, 16), torch.randn(5, 3, 16)
    cpu = head(P, q, n)
    gpu = head.cuda()(P.cuda(), q.cuda(), n.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
