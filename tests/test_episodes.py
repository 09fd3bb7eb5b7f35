"""few_shot_episodes: shapes, label layout, reproducibility, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avalanche_fscl.streams import TensorImageDataset, digits_fscil, few_shot_episodes


def dataset(n_classes=8, per_class=10):
    y = np.repeat(np.arange(n_classes), per_class)
    x = torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1)  # x = dataset index
    return TensorImageDataset(x, y)


def test_episode_shapes_labels_and_membership():
    ds = dataset()
    eps = few_shot_episodes(ds, n_way=5, k_shot=2, n_query=3, n_episodes=4, seed=0)
    assert len(eps) == 4
    ep = eps[0]
    assert ep.support_x.shape == (10, 1, 1, 1) and ep.query_x.shape == (15, 1, 1, 1)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_y.tolist() == [w for w in range(5) for _ in range(3)]
    assert len(set(ep.classes)) == 5
    for xs, ys in ((ep.support_x, ep.support_y), (ep.query_x, ep.query_y)):
        for x, y in zip(xs.flatten().long().tolist(), ys.tolist()):
            assert ds.targets[x] == ep.classes[y]  # local label y <-> dataset class
    s = set(ep.support_x.flatten().tolist())
    assert not s & set(ep.query_x.flatten().tolist()), "support and query must not overlap"


def test_reproducible_by_seed_and_random_access():
    ds = dataset()
    a = few_shot_episodes(ds, 3, 1, 2, n_episodes=5, seed=7)
    b = few_shot_episodes(ds, 3, 1, 2, n_episodes=5, seed=7)
    c = few_shot_episodes(ds, 3, 1, 2, n_episodes=5, seed=8)
    assert all(torch.equal(x.support_x, y.support_x) and x.classes == y.classes for x, y in zip(a, b))
    assert torch.equal(a[3].query_x, list(b)[3].query_x)
    assert any(x.classes != y.classes or not torch.equal(x.support_x, y.support_x) for x, y in zip(a, c))
    assert len({tuple(e.classes) for e in a}) > 1, "episodes must vary"


def test_classes_restriction_and_avalanche_datasets():
    bm = digits_fscil()
    eps = few_shot_episodes(bm.train_stream[0].dataset, 4, 5, 5, n_episodes=2, seed=0)
    assert sorted(eps[0].classes) == [0, 1, 2, 3]
    assert eps[0].support_x.shape == (20, 1, 8, 8) and eps[0].support_x.dtype == torch.float32
    eps = few_shot_episodes(dataset(), 2, 1, 1, n_episodes=3, classes=[6, 7])
    assert all(sorted(e.classes) == [6, 7] for e in eps)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_way=9, k_shot=1, n_query=1), r"n_way=9 but only 8 classes .*allowed n_way: 1\.\.8"),
        (dict(n_way=2, k_shot=8, n_query=3), r"k_shot \+ n_query = 11 .*must be <= 10"),
        (dict(n_way=0, k_shot=1, n_query=1), r"n_way must be an integer >= 1"),
        (dict(n_way=2, k_shot=1, n_query=-1), r"n_query must be an integer >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        few_shot_episodes(dataset(), n_episodes=1, **kwargs)


def test_index_out_of_range():
    eps = few_shot_episodes(dataset(), 2, 1, 1, n_episodes=2)
    with pytest.raises(IndexError, match=r"episode 5 out of range 0\.\.1"):
        eps[5]
