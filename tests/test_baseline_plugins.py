"""Baseline plugins (EWC, LwF, replay, NCM, prototypes): behaviour and exact resumption.

Everything runs on tiny synthetic FSCIL scenarios (Gaussian class clusters as 1x4x4
"images") with a small MLP backbone, on the CPU.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_fscl.models.classifier import MASK_VALUE, FSCILNet
from avalanche_fscl.plugins import (
    ClassBalancedReplayPlugin,
    NCMClassifierPlugin,
    PrototypeClassifierPlugin,
    StatefulEWCPlugin,
    StatefulLwFPlugin,
    class_mean_features,
    extract_features,
)
from avalanche_fscl.streams import TensorImageDataset, fscil_benchmark

# EvaluationPlugin(loggers=[]) warns that nothing is logged: intended here.
pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning")

N_CLASSES = 8  # 4 base classes + 2 sessions of 2 ways
BASE, WAYS, SHOTS = 4, 2, 5
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 20
ACC_KEY = "Top1_Acc_Stream/eval_phase/test_stream"


# ----------------------------------------------------------------------------- fixtures
class Scale:
    """Eval transform: a deterministic normalisation."""

    def __call__(self, x):
        return x * 0.5


class ScaleNoise:
    """Train transform: the normalisation plus noise (an "augmentation", global RNG)."""

    def __call__(self, x):
        return x * 0.5 + 0.05 * torch.randn_like(x)


def make_scenario(seed: int = 0, spread: float = 3.0, augment: bool = True):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(N_CLASSES, 16, generator=g) * spread

    def sample(n):
        y = torch.arange(N_CLASSES).repeat_interleave(n)
        x = centers[y] + torch.randn(len(y), 16, generator=g)
        return TensorImageDataset(x.view(-1, 1, 4, 4), y)

    return fscil_benchmark(
        sample(TRAIN_PER_CLASS),
        sample(TEST_PER_CLASS),
        base_classes=BASE,
        ways=WAYS,
        shots=SHOTS,
        seed=seed,
        train_transform=ScaleNoise() if augment else Scale(),
        eval_transform=Scale(),
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: one intra-op thread is faster and immune to a busy 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def scenario():
    return make_scenario()


class MLP(nn.Module):
    out_dim = 16

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16)
        )

    def forward(self, x):
        return self.net(x)


def make_model(seed: int = 0, head: str = "linear") -> FSCILNet:
    torch.manual_seed(seed)
    return FSCILNet(MLP(), N_CLASSES, head=head)


def make_strategy(model, plugins, lr=0.1, epochs=3):
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=epochs,
        eval_mb_size=64,
        device="cpu",
        plugins=plugins,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )


def train_session(strategy, scenario, s):
    torch.manual_seed(1000 + s)  # same seeding in uninterrupted and resumed runs
    strategy.train(scenario.train_stream[s])


def stream_acc(strategy, scenario, s) -> float:
    return strategy.eval(scenario.test_stream[: s + 1])[ACC_KEY]


def roundtrip(obj):
    """``torch.save`` + ``torch.load(weights_only=True)``, as the benchmark runner does."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


class Probe(SupervisedPlugin):
    """Records what the plugins before it did (put it after them in the plugin list)."""

    def __init__(self):
        super().__init__()
        self.penalties: dict[int, list[float]] = {}
        self.train_sizes: dict[int, int] = {}
        self.epochs: dict[int, int] = {}
        self.finished: list[int] = []

    def before_training_exp(self, strategy, *args, **kwargs):
        s = strategy.experience.current_experience
        self.train_sizes[s] = len(strategy.adapted_dataset)
        self.epochs[s] = 0

    def before_training_epoch(self, strategy, *args, **kwargs):
        self.epochs[strategy.experience.current_experience] += 1

    def before_backward(self, strategy, *args, **kwargs):
        ce = strategy._criterion(strategy.mb_output, strategy.mb_y)
        penalty = float(strategy.loss.detach() - ce.detach())
        self.penalties.setdefault(strategy.experience.current_experience, []).append(penalty)

    def after_training_exp(self, strategy, *args, **kwargs):
        self.finished.append(strategy.experience.current_experience)


def eval_items(exp, cls=None):
    data = exp.dataset.eval()
    items = [data[i] for i in range(len(data))]
    return [(x, int(y)) for x, y, _ in items if cls is None or int(y) == cls]


def model_tensors(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


# ------------------------------------------------------------------ exact resumption
PLUGIN_SETS = {
    "replay": lambda: [ClassBalancedReplayPlugin(mem_per_class=6, seed=3)],
    "ewc": lambda: [StatefulEWCPlugin(ewc_lambda=50.0)],
    "ewc_online": lambda: [StatefulEWCPlugin(ewc_lambda=50.0, mode="online", decay_factor=0.5)],
    "lwf": lambda: [StatefulLwFPlugin(alpha=[0.0, 1.0, 2.0], temperature=2.0)],
    "replay_ewc_lwf": lambda: [
        ClassBalancedReplayPlugin(mem_per_class=6, seed=3),
        StatefulEWCPlugin(ewc_lambda=10.0),
        StatefulLwFPlugin(alpha=1.0),
    ],
    "replay_ncm": lambda: _replay_ncm(),
    "prototype": lambda: [PrototypeClassifierPlugin()],
}


def _replay_ncm():
    replay = ClassBalancedReplayPlugin(mem_per_class=6, seed=3)
    return [replay, NCMClassifierPlugin(source="memory", replay=replay)]


@pytest.mark.parametrize("name", list(PLUGIN_SETS))
def test_resume_after_session_1_is_exact(scenario, name):
    head = "cosine" if name == "prototype" else "linear"
    # uninterrupted: sessions 0, 1, 2
    model_a = make_model(0, head)
    plugins_a = PLUGIN_SETS[name]()
    strat_a = make_strategy(model_a, plugins_a)
    for s in range(3):
        train_session(strat_a, scenario, s)

    # interrupted after session 1, checkpointed through torch.save / weights_only load
    model_b = make_model(0, head)
    plugins_b = PLUGIN_SETS[name]()
    strat_b = make_strategy(model_b, plugins_b)
    for s in range(2):
        train_session(strat_b, scenario, s)
    ckpt = roundtrip(
        {
            "model": model_b.state_dict(),
            "optimizer": strat_b.optimizer.state_dict(),
            "plugins": [p.state_dict() for p in plugins_b],
        }
    )
    del model_b, plugins_b, strat_b

    # fresh objects (another init, so every weight must come from the checkpoint)
    model_c = make_model(123, head)
    model_c.load_state_dict(ckpt["model"])
    plugins_c = PLUGIN_SETS[name]()
    for p, state in zip(plugins_c, ckpt["plugins"]):
        p.load_state_dict(state)
    strat_c = make_strategy(model_c, plugins_c)
    strat_c.optimizer.load_state_dict(ckpt["optimizer"])
    train_session(strat_c, scenario, 2)

    ta, tc = model_tensors(model_a), model_tensors(model_c)
    assert ta.keys() == tc.keys()
    for k in ta:
        assert torch.equal(ta[k], tc[k]), f"{name}: {k} differs after resuming"
    # the plugins end in the same state, and evaluation gives the same predictions
    for pa, pc in zip(plugins_a, plugins_c):
        _assert_state_equal(pa.state_dict(), pc.state_dict())
    acc_a, acc_c = stream_acc(strat_a, scenario, 2), stream_acc(strat_c, scenario, 2)
    assert acc_a == acc_c


def _assert_state_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_resume_diverges_without_plugin_state(scenario):
    """Control for the test above: dropping the EWC state changes the outcome."""
    model_a = make_model(0)
    strat_a = make_strategy(model_a, [StatefulEWCPlugin(ewc_lambda=50.0)])
    for s in range(3):
        train_session(strat_a, scenario, s)
    model_b = make_model(0)
    strat_b = make_strategy(model_b, [StatefulEWCPlugin(ewc_lambda=50.0)])
    for s in range(2):
        train_session(strat_b, scenario, s)
    strat_c = make_strategy(model_b, [StatefulEWCPlugin(ewc_lambda=50.0)])  # state lost
    train_session(strat_c, scenario, 2)
    assert not torch.equal(model_a.weight, model_b.weight)


# ------------------------------------------------------------------------------- EWC
def test_ewc_penalty_and_state_roundtrip(scenario):
    ewc, probe = StatefulEWCPlugin(ewc_lambda=50.0), Probe()
    strategy = make_strategy(make_model(0), [ewc, probe])
    train_session(strategy, scenario, 0)
    assert max(abs(p) for p in probe.penalties[0]) == 0.0
    assert ewc.exp_counter == 1 and set(ewc.importances) == {0}
    assert sum(float(pd.data.sum()) for pd in ewc.importances[0].values()) > 0
    train_session(strategy, scenario, 1)
    assert min(probe.penalties[1][1:]) > 0  # the first step starts at the saved weights
    assert max(probe.penalties[1]) > 1e-6

    state = roundtrip(ewc.state_dict())
    fresh = StatefulEWCPlugin(ewc_lambda=50.0)
    fresh.load_state_dict(state)
    assert fresh.exp_counter == 2
    for store in ("importances", "saved_params"):
        a, b = getattr(ewc, store), getattr(fresh, store)
        assert set(a) == set(b) == {0, 1}
        for e in a:
            assert list(a[e]) == list(b[e])
            for k in a[e]:
                assert a[e][k].name == b[e][k].name
                assert torch.equal(a[e][k].data, b[e][k].data)
    with pytest.raises(ValueError, match="version"):
        fresh.load_state_dict({**state, "version": 99})


# ------------------------------------------------------------------------------- LwF
def test_lwf_state_roundtrip_and_lazy_snapshot(scenario):
    lwf, probe = StatefulLwFPlugin(alpha=1.0), Probe()
    strategy = make_strategy(make_model(0), [lwf, probe])
    train_session(strategy, scenario, 0)
    assert max(abs(p) for p in probe.penalties[0]) == 0.0
    state = roundtrip(lwf.state_dict())
    assert state["expcount"] == 1 and state["prev_classes_by_task"] == {0: [0, 1, 2, 3]}

    fresh, probe2 = StatefulLwFPlugin(alpha=1.0), Probe()
    fresh.load_state_dict(state)
    assert fresh.lwf.prev_model is None  # rebuilt when a strategy is available
    _assert_state_equal(fresh.state_dict(), state)  # a pending state is saved as loaded

    # the snapshot is rebuilt from the saved weights, not from the strategy's current model
    other = StatefulLwFPlugin(alpha=1.0)
    other.load_state_dict(state)
    current = make_model(7)
    other.before_training(SimpleNamespace(model=current))
    rebuilt = other.lwf.prev_model
    assert rebuilt is not current and rebuilt.training
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, state["prev_model"][k]), k
    assert not torch.equal(current.weight, rebuilt.weight)
    model = make_model(7)
    model.load_state_dict(strategy.model.state_dict())
    strategy2 = make_strategy(model, [fresh, probe2])
    train_session(strategy2, scenario, 1)
    assert fresh.lwf.prev_classes_by_task[0] == {0, 1, 2, 3, 4, 5}
    assert max(probe2.penalties[1]) > 0  # distillation is active in session 1


# ---------------------------------------------------------------------------- replay
def test_replay_memory_content_and_training_set(scenario):
    replay, probe = ClassBalancedReplayPlugin(mem_per_class=8, seed=0), Probe()
    strategy = make_strategy(make_model(0), [replay, probe], epochs=1)
    for s in range(3):
        train_session(strategy, scenario, s)
        seen = scenario.classes_seen_after(s)
        assert replay.memory_classes() == seen
        counts = torch.bincount(replay.memory_y, minlength=N_CLASSES).tolist()
        for c in range(N_CLASSES):
            n_c = TRAIN_PER_CLASS if c < BASE else SHOTS
            assert counts[c] == (min(8, n_c) if c in seen else 0)
        assert replay.memory_x.shape == (replay.memory_size, 1, 4, 4)
        # stored samples are eval-transformed dataset items (not augmented), no repeats
        exp = scenario.train_stream[s]
        for c in scenario.session_classes[s]:
            pool = eval_items(exp, c)
            stored = replay.memory_x[replay.memory_y == c]
            matches = []
            for m in stored:
                hits = [i for i, (x, _) in enumerate(pool) if torch.equal(x, m)]
                assert hits, f"a stored sample of class {c} is not an eval-transformed item"
                matches.append(hits[0])
            assert len(set(matches)) == len(stored)
    # the training set of a session is its data plus the memory of the earlier ones
    assert probe.train_sizes[0] == len(scenario.train_stream[0].dataset)
    assert probe.train_sizes[1] == len(scenario.train_stream[1].dataset) + BASE * 8
    assert probe.train_sizes[2] == len(scenario.train_stream[2].dataset) + BASE * 8 + WAYS * SHOTS


def test_replay_reproducible_by_seed_and_state(scenario):
    exp = scenario.train_stream[0]

    def memory(seed, global_seed):
        torch.manual_seed(global_seed)  # must not matter
        p = ClassBalancedReplayPlugin(mem_per_class=5, seed=seed)
        p.store(exp.dataset, exp.classes_in_this_experience, exp.current_experience)
        return p

    a, b, c = memory(1, 0), memory(1, 99), memory(2, 0)
    assert torch.equal(a.memory_x, b.memory_x) and torch.equal(a.memory_y, b.memory_y)
    assert not torch.equal(a.memory_x, c.memory_x)
    # another experience id draws another subset
    d = ClassBalancedReplayPlugin(mem_per_class=5, seed=1)
    d.store(exp.dataset, exp.classes_in_this_experience, 5)
    assert not torch.equal(a.memory_x, d.memory_x)

    fresh = ClassBalancedReplayPlugin(mem_per_class=5, seed=1)
    fresh.load_state_dict(roundtrip(a.state_dict()))
    assert torch.equal(fresh.memory_x, a.memory_x) and torch.equal(fresh.memory_y, a.memory_y)
    empty = ClassBalancedReplayPlugin(mem_per_class=5, seed=1)
    empty.load_state_dict(roundtrip(ClassBalancedReplayPlugin(5, 1).state_dict()))
    assert empty.memory_x is None and empty.memory_classes() == []
    with pytest.raises(ValueError, match="mem_per_class"):
        ClassBalancedReplayPlugin(mem_per_class=6, seed=1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError):
        ClassBalancedReplayPlugin(mem_per_class=0)


# ------------------------------------------------------------------------------- NCM
def test_ncm_untrained_extractor_classifies_all_seen_classes(scenario):
    """Random-init features + NCM: high accuracy, although the (untrained) head is at chance."""
    ncm = NCMClassifierPlugin(source="data")
    strategy = make_strategy(make_model(0), [ncm], lr=0.0, epochs=1)
    calls = []
    strategy.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    for s in range(3):
        train_session(strategy, scenario, s)
    assert ncm.means.shape == (N_CLASSES, MLP.out_dim)
    assert ncm.known.all()
    assert torch.allclose(ncm.means.norm(dim=1), torch.ones(N_CLASSES))
    calls.clear()
    acc = stream_acc(strategy, scenario, 2)
    assert acc > 0.9
    n_batches = sum(-(-len(e.dataset) // 64) for e in scenario.test_stream)
    assert len(calls) == n_batches  # features captured from the normal forward: no 2nd pass
    assert "features" not in strategy.model.__dict__

    # the untrained model's own head is far worse: the output really was replaced
    strategy.plugins.remove(ncm)
    assert stream_acc(strategy, scenario, 2) < 0.6

    # state round trip: a fresh plugin predicts identically
    fresh = NCMClassifierPlugin(source="data")
    fresh.load_state_dict(roundtrip(ncm.state_dict()))
    assert torch.equal(fresh.means, ncm.means)
    strategy.plugins.insert(0, fresh)
    assert stream_acc(strategy, scenario, 2) == acc

    # a model whose forward does not go through `features`: features are recomputed
    model = strategy.model
    model.forward = lambda x: model.logits(model.backbone(x))
    calls.clear()
    assert stream_acc(strategy, scenario, 2) == acc
    assert len(calls) == 2 * n_batches


def test_ncm_with_memory_beats_finetuning(scenario):
    finetune = make_strategy(make_model(0), [], epochs=20)
    replay = ClassBalancedReplayPlugin(mem_per_class=8, seed=0)
    ncm = NCMClassifierPlugin(source="memory", replay=replay)
    icarl = make_strategy(make_model(0), [replay, ncm], epochs=20)
    for s in range(3):
        train_session(finetune, scenario, s)
        train_session(icarl, scenario, s)
    ft_acc, ncm_acc = stream_acc(finetune, scenario, 2), stream_acc(icarl, scenario, 2)
    assert ft_acc < 0.5, ft_acc  # fine-tuning alone forgets the base classes
    assert stream_acc(finetune, scenario, 0) < 0.5
    assert ncm_acc > 0.9, ncm_acc

    # the means were recomputed with the final model: old classes from the memory,
    # the current ones from all their data
    model = icarl.model
    expected = class_mean_features(
        model, replay.memory_dataset(), list(range(BASE + WAYS)), 64, "cpu", normalize_features=True
    )
    assert torch.allclose(ncm.means[: BASE + WAYS], F.normalize(expected, dim=1), atol=1e-5)
    feats, labels = extract_features(model, scenario.train_stream[2].dataset.eval(), 7, "cpu")
    cur = [F.normalize(feats[labels == c], dim=1).mean(0) for c in scenario.session_classes[2]]
    assert torch.allclose(ncm.means[BASE + WAYS :], F.normalize(torch.stack(cur), dim=1), atol=1e-5)


def test_ncm_arguments_and_masking():
    with pytest.raises(ValueError, match="replay"):
        NCMClassifierPlugin()  # source="memory" needs a replay plugin
    with pytest.raises(ValueError, match="source"):
        NCMClassifierPlugin(source="other")
    ncm = NCMClassifierPlugin(source="data", scale=2.0)
    ncm.load_state_dict(
        {"version": 1, "means": torch.eye(3, 4), "known": torch.tensor([True, False, True])}
    )
    out = ncm.scores(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]), width=5)
    assert out.shape == (2, 5)
    assert out[0, 0] == 2.0 and out[1, 2] == 2.0 and out[0, 2] == 0.0
    assert (out[:, 1] == MASK_VALUE).all() and (out[:, 3:] == MASK_VALUE).all()


# ------------------------------------------------------------------------- prototypes
def test_prototype_classifier(scenario):
    proto, probe = PrototypeClassifierPlugin(), Probe()
    model = make_model(0, head="cosine")
    strategy = make_strategy(model, [proto, probe], epochs=3)
    train_session(strategy, scenario, 0)
    assert proto.backbone_frozen
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert model.weight.requires_grad
    backbone_after_base = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert any("running_mean" in k for k in backbone_after_base)

    def prototypes(s):
        feats, labels = extract_features(model, scenario.train_stream[s].dataset.eval(), 64, "cpu")
        cls = scenario.session_classes[s]
        return F.normalize(torch.stack([feats[labels == c].mean(0) for c in cls]), dim=1)

    assert torch.allclose(model.weight[:BASE], prototypes(0), atol=1e-6)  # replace_base=True
    base_x = torch.stack([x for x, _ in eval_items(scenario.test_stream[0])])
    base_y = torch.tensor([y for _, y in eval_items(scenario.test_stream[0])])
    model.eval()
    with torch.no_grad():
        base_logits = model(base_x)[:, :BASE]
    base_acc = (base_logits.argmax(1) == base_y).float().mean().item()
    assert base_acc > 0.9

    for s in (1, 2):
        train_session(strategy, scenario, s)
        assert probe.epochs[s] == 0 and s in probe.finished  # no gradient training
        assert strategy.train_epochs == 3  # restored after the session
        for k, v in model.backbone.state_dict().items():
            assert torch.equal(v, backbone_after_base[k]), k  # weights and BN statistics
        rows = scenario.session_classes[s]
        assert torch.allclose(model.weight[rows], prototypes(s), atol=1e-6)
    assert probe.epochs[0] == 3

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(base_x)[:, :BASE], base_logits)  # base logits unchanged
    assert stream_acc(strategy, scenario, 0) == pytest.approx(base_acc)
    # novel classes (2 of 8 classes per session: chance 1/8) are recognised
    novel_acc = strategy.eval(scenario.test_stream[1:3])[ACC_KEY]
    assert novel_acc > 0.8, novel_acc

    state = roundtrip(proto.state_dict())
    assert state == {"version": 1, "backbone_frozen": True, "saved_train_epochs": None}


def test_prototype_keep_trained_base_rows(scenario):
    proto = PrototypeClassifierPlugin(replace_base=False, freeze_after_base=False)
    model = make_model(0, head="cosine")
    strategy = make_strategy(model, [proto], epochs=1)
    train_session(strategy, scenario, 0)
    trained = model.weight[:BASE].detach().clone()
    assert not proto.backbone_frozen and all(p.requires_grad for p in model.backbone.parameters())
    train_session(strategy, scenario, 1)
    assert torch.equal(model.weight[:BASE], trained)
    with pytest.raises(TypeError, match="FSCILNet"):
        make_strategy(nn.Linear(16, 8), [PrototypeClassifierPlugin()]).train(scenario.train_stream[0])
