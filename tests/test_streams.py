"""fscil_benchmark: session structure, shot selection, validation errors, Avalanche integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avalanche_fscl.streams import (
    FSCILScenario,
    TensorImageDataset,
    ToFloatNormalize,
    fscil_benchmark,
    get_stream,
    list_streams,
)


def make_data(n_classes=10, n_train=12, n_test=3, offset=0):
    """Each image encodes (label, index) so tests can check exactly which samples were taken."""
    def split(n):
        y = np.repeat(np.arange(offset, offset + n_classes), n)
        x = torch.zeros(len(y), 1, 2, 2)
        x[:, 0, 0, 0] = torch.from_numpy(y).float()
        x[:, 0, 0, 1] = torch.arange(len(y)).float()
        return TensorImageDataset(x, y)
    return split(n_train), split(n_test)


def test_session_structure_and_sample_counts():
    train, test = make_data()
    bm = fscil_benchmark(train, test, base_classes=4, ways=2, shots=5)
    assert isinstance(bm, FSCILScenario)
    assert bm.n_sessions == 4 and bm.n_classes == 10
    assert bm.base_classes == [0, 1, 2, 3]
    assert bm.session_classes == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert [len(e.dataset) for e in bm.train_stream] == [4 * 12, 10, 10, 10]
    assert [len(e.dataset) for e in bm.test_stream] == [4 * 3, 6, 6, 6]
    for s, exp in enumerate(bm.train_stream):
        ys = [int(exp.dataset[i][1]) for i in range(len(exp.dataset))]
        assert set(ys) == set(bm.session_classes[s])
        if s > 0:
            assert all(ys.count(c) == 5 for c in bm.session_classes[s])
        assert exp.classes_in_this_experience == set(bm.session_classes[s])
        assert exp.classes_seen_so_far == set(bm.classes_seen_after(s))
    # items are (x, y, task) tensors-or-ints, as Avalanche's class-incremental generators give
    x, y, t = bm.train_stream[1].dataset[0]
    assert x.shape == (1, 2, 2) and t == 0


def test_shots_are_reproducible_by_seed_and_differ_across_seeds():
    train, test = make_data()
    a = fscil_benchmark(train, test, base_classes=4, ways=2, shots=3, seed=1)
    b = fscil_benchmark(train, test, base_classes=4, ways=2, shots=3, seed=1)
    c = fscil_benchmark(train, test, base_classes=4, ways=2, shots=3, seed=2)
    assert a.shot_indices == b.shot_indices
    assert a.shot_indices[1:] != c.shot_indices[1:]
    assert a.shot_indices[0] == c.shot_indices[0] == list(range(48))  # base: all samples
    # the indices point at samples of the right classes: pixel (0,1) stores the dataset index
    exp = a.train_stream[2]
    stored = sorted(int(exp.dataset[i][0][0, 0, 1]) for i in range(len(exp.dataset)))
    assert stored == sorted(a.shot_indices[2])
    assert all(train.targets[i] in (6, 7) for i in stored)


def test_class_order_remaps_labels_and_names():
    train, test = make_data(n_classes=6, offset=10)
    order = [15, 10, 14, 11, 13, 12]
    names = {c: f"class{c}" for c in range(10, 16)}
    bm = fscil_benchmark(train, test, base_classes=2, ways=2, shots=2, class_order=order, class_names=names)
    assert bm.class_order == order
    assert bm.class_names == [f"class{c}" for c in order]
    # new id i <-> original label order[i]; pixel (0,0) stores the original label
    for exp in list(bm.train_stream) + list(bm.test_stream):
        for i in range(len(exp.dataset)):
            x, y, _ = exp.dataset[i]
            assert order[int(y)] == int(x[0, 0, 0])
    assert bm.train_stream[1].class_names == {0: "class15", 1: "class10", 2: "class14", 3: "class11"}
    assert bm.test_stream[0].class_names == {0: "class15", 1: "class10"}


def test_sessions_argument_limits_the_stream():
    train, test = make_data()
    bm = fscil_benchmark(train, test, base_classes=4, ways=2, shots=5, sessions=1)
    assert bm.n_sessions == 2 and bm.class_order == [0, 1, 2, 3, 4, 5]


def test_few_shot_base_session():
    train, test = make_data()
    bm = fscil_benchmark(train, test, base_classes=2, ways=2, shots=3, base_shots=3)
    assert [len(e.dataset) for e in bm.train_stream] == [6, 6, 6, 6, 6]
    assert bm.base_shots == 3


def test_explicit_shot_indices_are_used_exactly():
    train, test = make_data()
    # class c occupies indices 12c .. 12c+11
    s1 = [48, 49, 50, 60, 61, 62]
    s2 = [72, 75, 77, 84, 85, 86]
    s3 = [96, 97, 98, 108, 109, 110]
    bm = fscil_benchmark(train, test, base_classes=4, ways=2, shots=3, shot_indices=[s1, s2, s3])
    assert bm.shot_indices[1:] == [s1, s2, s3]
    base = list(range(0, 48, 2))  # with the base session: 6 samples per base class
    bm = fscil_benchmark(train, test, base_classes=4, ways=2, shots=3, shot_indices=[base, s1, s2, s3])
    assert bm.shot_indices[0] == base and len(bm.train_stream[0].dataset) == 24


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(base_classes=11, ways=2, shots=5), ValueError, r"base_classes=11 .*allowed: 1\.\.10"),
        (dict(base_classes=4, ways=4, shots=5), ValueError, r"sessions=None .*2 left over.*allowed: 0\.\.1"),
        (dict(base_classes=4, ways=2, shots=5, sessions=4), ValueError, r"sessions=4 .*allowed sessions: 0\.\.3"),
        (dict(base_classes=4, ways=2, shots=13), ValueError, r"shots=13 but class 4 has only 12.*allowed: 1\.\.12"),
        (dict(base_classes=4, ways=2, shots=5, base_shots=20), ValueError, r"base_shots=20"),
        (dict(base_classes=0, ways=2, shots=5), ValueError, r"base_classes must be an integer >= 1"),
        (dict(base_classes=4, ways=0, shots=5), ValueError, r"ways must be an integer >= 1"),
        (dict(base_classes=4, ways=2, shots=5, class_order=[0, 1, 1, 2]), ValueError, r"class_order has duplicate labels \[1\]"),
        (dict(base_classes=4, ways=2, shots=5, class_order=[0, 1, 2, 42]), ValueError, r"class_order has labels \[42\].*0\.\.9"),
        (dict(base_classes=4, ways=2, shots=3, shot_indices=[[48]]), ValueError, r"shot_indices has 1 lists; allowed: 3 .* or 4"),
        (dict(base_classes=4, ways=2, shots=3, shot_indices=[[0, 1, 2, 60, 61, 62], [72, 73, 74, 84, 85, 86], [96, 97, 98, 108, 109, 110]]), ValueError, r"shot_indices for session 1: samples of classes \[0\]"),
        (dict(base_classes=4, ways=2, shots=3, shot_indices=[[48, 49, 60, 61, 62, 63], [72, 73, 74, 84, 85, 86], [96, 97, 98, 108, 109, 110]]), ValueError, r"exactly 3 samples per class, got \{4: 2, 5: 4\}"),
        (dict(base_classes=4, ways=2, shots=3, shot_indices=[[48, 49, 999], [], []]), ValueError, r"indices must be in 0\.\.119"),
        (dict(base_classes=4, ways=2, shots=3, class_names=["a", "b"]), ValueError, r"class_names has no name for label 2"),
    ],
)
def test_bad_arguments_raise_named_errors(kwargs, exc, match):
    train, test = make_data()
    with pytest.raises(exc, match=match):
        fscil_benchmark(train, test, **kwargs)


def test_missing_test_classes_and_missing_targets():
    train, _ = make_data()
    _, test = make_data(n_classes=5)
    with pytest.raises(ValueError, match=r"test_dataset has no samples of classes \[5, 6"):
        fscil_benchmark(train, test, base_classes=4, ways=2, shots=5)
    with pytest.raises(ValueError, match="has no `.targets`"):
        fscil_benchmark([(torch.zeros(1), 0)], test, base_classes=1, ways=1, shots=1)


def test_transform_groups_apply_in_train_and_eval():
    train, test = make_data()
    bm = fscil_benchmark(
        train, test, base_classes=4, ways=2, shots=5,
        train_transform=ToFloatNormalize([1.0], [1.0]), eval_transform=ToFloatNormalize([0.0], [2.0]),
    )
    ds = bm.train_stream[1].dataset
    raw = train.data[bm.shot_indices[1][0]]
    assert torch.allclose(ds.train()[0][0], raw - 1.0)
    assert torch.allclose(ds.eval()[0][0], raw / 2.0)


def test_naive_strategy_trains_on_a_stream():
    """A linear model trained with Avalanche's Naive on the stream learns the base classes."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 4)) * 3

    def split(n):
        y = np.repeat(np.arange(6), n)
        x = torch.from_numpy((centers[y] + rng.normal(size=(len(y), 4))).astype(np.float32))
        return TensorImageDataset(x.view(-1, 1, 2, 2), y)

    bm = fscil_benchmark(split(40), split(20), base_classes=4, ways=1, shots=5)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 6))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     train_mb_size=16, train_epochs=5, eval_mb_size=64,
                     evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    strategy.train(bm.train_stream[0])
    res = strategy.eval(bm.test_stream[:1])
    assert res["Top1_Acc_Stream/eval_phase/test_stream"] > 0.8  # chance is 0.25


def test_registry_lists_every_preset_and_rejects_unknown_names():
    names = list_streams()
    assert set(names) >= {"digits_fscil", "omniglot_fscil", "tiny_imagenet_fscil",
                          "cifar100_fscil", "mini_imagenet_fscil", "cub200_fscil"}
    assert all(doc for doc in names.values())
    with pytest.raises(ValueError, match=r"unknown stream 'nope'; allowed: .*digits_fscil"):
        get_stream("nope")
