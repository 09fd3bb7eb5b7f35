"""RetrievalAugmentedPlugin and the raml/knn strategies: learned behaviour where neighbours carry
signal, the kNN vote by hand, the memory across sessions, staleness, exact resumption and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avalanche_fscl.models import FSCILNet
from avalanche_fscl.plugins import PrototypeClassifierPlugin, RetrievalAugmentedPlugin
from avalanche_fscl.retrieval import StaleMemoryError
from avalanche_fscl.streams import TensorImageDataset, fscil_benchmark
from test_baseline_plugins import (
    _one_thread,  # noqa: F401  (autouse fixture: one intra-op thread for these tiny tensors)
    make_strategy,
    model_tensors,
    roundtrip,
    train_session,
)

pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning")

N_CLASSES, BASE, WAYS, SHOTS = 10, 6, 2, 5
META = dict(meta_episodes=60, meta_ways=4, meta_shots=3, meta_queries=4, head_lr=0.01, refresh_every=10)


class Flat(nn.Module):
    """A fixed encoder (the input itself) with one trainable scalar so optimizers have a parameter."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.gain * x.flatten(1)


def multimodal_scenario(seed: int = 0, train_per_class: int = 30, test_per_class: int = 20):
    """Every class is three clusters far apart: its prototype (their mean) sits between them,
    where other classes' clusters may lie; neighbours from the query's own cluster carry signal."""
    g = torch.Generator().manual_seed(seed)
    modes = torch.randn(N_CLASSES, 3, 16, generator=g) * 3.0

    def sample(n):
        y = torch.arange(N_CLASSES).repeat_interleave(n)
        m = torch.randint(0, 3, (len(y),), generator=g)
        x = modes[y, m] + 0.6 * torch.randn(len(y), 16, generator=g)
        return TensorImageDataset(x.view(-1, 1, 4, 4), y)

    return fscil_benchmark(sample(train_per_class), sample(test_per_class), base_classes=BASE, ways=WAYS,
                           shots=SHOTS, seed=seed)


@pytest.fixture(scope="module")
def scenario():
    return multimodal_scenario(seed=1)


def make_model(seed: int = 0) -> FSCILNet:
    torch.manual_seed(seed)
    return FSCILNet(Flat(), N_CLASSES, head="cosine")


def run(scenario, plugin, sessions=3):
    model = make_model()
    strategy = make_strategy(model, [plugin], lr=0.1, epochs=2)
    for s in range(sessions):
        train_session(strategy, scenario, s)
    return model, strategy


def accuracy(strategy, scenario, upto: int) -> float:
    return strategy.eval(scenario.test_stream[: upto + 1])["Top1_Acc_Stream/eval_phase/test_stream"]


def test_beats_the_prototype_classifier_where_neighbours_carry_signal(scenario):
    _, proto = run(scenario, PrototypeClassifierPlugin())
    _, raml = run(scenario, RetrievalAugmentedPlugin(k=5, **META))
    p, r = accuracy(proto, scenario, 2), accuracy(raml, scenario, 2)
    assert r > p + 0.05, (r, p)  # 0.730 vs 0.590 (scenario seeds 0, 2: +0.08, -0.03)
    _, labelled = run(scenario, RetrievalAugmentedPlugin(k=5, label_views=True, **META))
    assert accuracy(labelled, scenario, 2) > p + 0.05  # with label views too (0.705; seeds 0, 2: +0.035, +0.05)


@pytest.mark.parametrize("balanced", [False, True])
def test_knn_vote_matches_a_hand_computation(scenario, balanced):
    plugin = RetrievalAugmentedPlugin(k=3, fusion=None, prototype_weight=0.0, vote_weight=1.0,
                                      balanced_vote=balanced, meta_episodes=0)
    model, strategy = run(scenario, plugin)
    train = [scenario.train_stream[s].dataset.eval() for s in range(3)]
    xs = torch.cat([torch.stack([d[i][0] for i in range(len(d))]) for d in train]).flatten(1)
    ys = torch.cat([torch.tensor([int(d[i][1]) for i in range(len(d))]) for d in train])
    test = scenario.test_stream[2].dataset.eval()
    xq = torch.stack([test[i][0] for i in range(len(test))])
    sims = F.normalize(xq.flatten(1), dim=1) @ F.normalize(xs, dim=1).T
    top, idx = sims.topk(3, dim=1)
    if balanced:  # each vote divided by its class's count (30 base, 5 novel), times the mean count
        counts = torch.bincount(ys, minlength=N_CLASSES).float()
        top = top * (counts.mean() / counts)[ys[idx]]
    votes = torch.zeros(len(xq), N_CLASSES).scatter_add_(1, ys[idx], top)
    with torch.no_grad():
        logits = model(xq)
    feats = model.features(xq)
    out = plugin.scores(logits[:, :N_CLASSES], model.weight, feats, labels_to_columns=None)
    torch.testing.assert_close(out, votes, rtol=1e-5, atol=1e-5)
    assert len(plugin.memory) == len(xs) and plugin.memory.n_external == 0


def test_memory_grows_with_each_session_and_keeps_the_external_corpus_unlabelled(scenario):
    external = TensorImageDataset(torch.randn(12, 1, 4, 4), torch.arange(12) % 3)
    plugin = RetrievalAugmentedPlugin(k=2, meta_episodes=0, external=external, per_class_cap=4)
    model, strategy = run(scenario, plugin, sessions=1)
    assert plugin.memory.n_external == 12 and plugin.memory.n_stream == BASE * 4  # capped per class
    assert plugin.memory.counts_per_class() == {c: 4 for c in range(BASE)}  # external labels dropped (-1)
    train_session(strategy, scenario, 1)
    assert plugin.memory.n_stream == BASE * 4 + WAYS * SHOTS - WAYS * max(0, SHOTS - 4)


def test_the_backbone_is_frozen_and_unchanged_after_the_base_session(scenario):
    plugin = RetrievalAugmentedPlugin(k=3, **META)
    model, strategy = run(scenario, plugin, sessions=1)
    before = {k: v.clone() for k, v in model_tensors(model).items() if k.startswith("backbone")}
    train_session(strategy, scenario, 1)
    assert all(torch.equal(before[k], v) for k, v in model_tensors(model).items() if k in before)


def test_a_changed_encoder_is_an_error_unless_reembed(scenario):
    for reembed in (False, True):
        plugin = RetrievalAugmentedPlugin(k=3, meta_episodes=0, reembed=reembed)
        model, strategy = run(scenario, plugin, sessions=2)
        with torch.no_grad():
            model.backbone.gain.mul_(2.0)  # someone trains the encoder after the memory was filled
        if not reembed:
            with pytest.raises(StaleMemoryError, match="encoder changed since the retrieval memory was embedded"):
                accuracy(strategy, scenario, 1)
            continue
        accuracy(strategy, scenario, 1)  # re-embeds first
        stored = plugin.memory.search(torch.randn(4, 16), k=3)
        assert stored.mask.all()
        # the re-embedded entries are the new encoder's features of the stored inputs
        pay = plugin.memory.payload_ids()
        x = torch.stack([plugin.inputs[int(p)] for p in pay])
        nb = plugin.memory.search(model.features(x).detach(), k=1)
        torch.testing.assert_close(nb.scores[:, 0], torch.ones(len(x)), rtol=1e-5, atol=1e-5)


def test_resume_after_session_1_is_exact(scenario):
    args = dict(k=4, vote_weight=0.5, **META)
    model, strategy = run(scenario, RetrievalAugmentedPlugin(**args), sessions=3)
    full = accuracy(strategy, scenario, 2)

    first, strategy1 = run(scenario, RetrievalAugmentedPlugin(**args), sessions=2)
    state = roundtrip({"model": first.state_dict(), "plugin": strategy1.plugins[0].state_dict()})
    resumed = make_model(seed=5)
    resumed.load_state_dict(state["model"])
    plugin = RetrievalAugmentedPlugin(**args)
    plugin.load_state_dict(state["plugin"])
    strategy2 = make_strategy(resumed, [plugin], lr=0.1, epochs=2)
    train_session(strategy2, scenario, 2)
    assert accuracy(strategy2, scenario, 2) == full
    assert torch.equal(plugin.memory.payload_ids(), strategy.plugins[0].memory.payload_ids())


def test_evaluating_before_the_memory_is_filled_is_an_error(scenario):
    strategy = make_strategy(make_model(), [RetrievalAugmentedPlugin(meta_episodes=0)], lr=0.1, epochs=1)
    with pytest.raises(ValueError, match="retrieval memory is empty at evaluation"):
        strategy.eval(scenario.test_stream[:1])


def _mlp_run(scenario, plugin, device: str = "cpu"):
    """One base session of the two-layer MLP of the baseline tests (cosine head)."""
    from test_baseline_plugins import make_model as make_mlp

    model = make_mlp(0, head="cosine")
    strategy = make_strategy(model, [plugin], lr=0.1, epochs=2)
    strategy.device = torch.device(device)
    model.to(device)
    train_session(strategy, scenario, 0)
    return model.cpu()


def test_meta_cache_gives_the_uncached_result_without_augmentation():
    from test_baseline_plugins import make_scenario

    # no augmentation: the cached lower layers' outputs are the ones the live path computes
    scenario = make_scenario(spread=2.0, augment=False)
    args = dict(k=3, meta_params="backbone.net.4", **{**META, "meta_ways": 3})  # Linear(32, 16) after BN + ReLU
    live, cached = RetrievalAugmentedPlugin(**args), RetrievalAugmentedPlugin(meta_cache=True, **args)
    ref = _mlp_run(scenario, PrototypeClassifierPlugin())
    a, b = _mlp_run(scenario, live), _mlp_run(scenario, cached)
    assert not torch.equal(a.backbone.net[4].weight, ref.backbone.net[4].weight), "meta-training ran"
    assert torch.equal(a.backbone.net[1].weight, ref.backbone.net[1].weight), "layers outside meta_params are kept"
    ta, tb = model_tensors(a), model_tensors(b)
    assert all(torch.allclose(ta[k], tb[k], atol=1e-5) for k in ta)
    ha, hb = live.head.state_dict(), cached.head.state_dict()
    assert all(torch.allclose(ha[k], hb[k], atol=1e-5) for k in ha), "the fusion head learns the same"
    # without augmentation the extra cached views are copies of the un-augmented one: same result
    c = _mlp_run(scenario, RetrievalAugmentedPlugin(meta_cache=True, meta_cache_views=3, **args))
    assert all(torch.equal(tb[k], v) for k, v in model_tensors(c).items())


def test_meta_cache_views_feed_the_episodes_augmented_inputs():
    from test_baseline_plugins import make_scenario

    scenario = make_scenario(spread=2.0, augment=True)  # training transform: scale + noise
    args = dict(k=3, meta_params="backbone.net.4", meta_cache=True, **{**META, "meta_ways": 3})
    one = _mlp_run(scenario, RetrievalAugmentedPlugin(**args))
    three = _mlp_run(scenario, RetrievalAugmentedPlugin(meta_cache_views=3, **args))
    assert not torch.equal(one.backbone.net[4].weight, three.backbone.net[4].weight), "augmented views were used"
    assert torch.equal(one.backbone.net[1].weight, three.backbone.net[1].weight), "the cached layers stay"


def test_meta_params_and_meta_cache_fail_before_any_training():
    from test_baseline_plugins import make_scenario

    scenario = make_scenario(spread=2.0)
    for plugin, match in [
        (RetrievalAugmentedPlugin(meta_params="encoder", **META),
         r"meta_params=\('encoder',\) selects no parameter of FSCILNet; its parameters start with \['backbone', 'weight'\]"),
        (RetrievalAugmentedPlugin(meta_params="backbone", meta_cache=True, **META),
         r"meta_cache: the selected parameters are used by its first layer"),
    ]:
        from test_baseline_plugins import make_model as make_mlp

        model = make_mlp(0, head="cosine")
        before = {k: v.clone() for k, v in model_tensors(model).items()}
        with pytest.raises(ValueError, match=match):
            train_session(make_strategy(model, [plugin]), scenario, 0)
        assert all(torch.equal(before[k], v) for k, v in model_tensors(model).items()), "raised before training"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(meta_cache=True), r"meta_cache=True needs meta_params"),
        (dict(meta_cache=1), r"meta_cache must be True or False, got 1"),
        (dict(meta_cache_views=2), r"meta_cache_views=2 needs meta_cache=True"),
        (dict(meta_cache_views=0), r"meta_cache_views must be an integer >= 1, got 0"),
        (dict(meta_params=["backbone", 3]), r"meta_params must be None, a name prefix, a list of prefixes or a predicate"),
        (dict(meta_params="backbone", train_encoder=False), r"meta_params needs train_encoder=True"),
        (dict(k=0), "k must be an integer >= 1, got 0"),
        (dict(fusion="max"), "fusion='max': allowed 'mean', 'attention' or None"),
        (dict(backend="annoy"), "unknown backend 'annoy': allowed"),
        (dict(vote_weight=-1), "vote_weight must be a number >= 0"),
        (dict(meta_ways=1), "meta_ways must be an integer >= 2"),
        (dict(fusion=None, prototype_weight=0, vote_weight=0), "leaves no classifier"),
        (dict(per_class_cap=0), "per_class_cap"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetrievalAugmentedPlugin(**kwargs)


@pytest.mark.cuda
def test_raml_runs_on_cuda_like_on_cpu(scenario):
    def on(device):
        model = make_model()
        plugin = RetrievalAugmentedPlugin(k=4, **META)
        strategy = make_strategy(model, [plugin], lr=0.1, epochs=2)
        strategy.device = torch.device(device)
        model.to(device)
        for s in range(3):
            train_session(strategy, scenario, s)
        return accuracy(strategy, scenario, 2), plugin

    cpu, _ = on("cpu")
    gpu, plugin = on("cuda")
    assert plugin.memory.device.type == "cuda" and next(plugin.head.parameters()).is_cuda
    assert abs(gpu - cpu) < 0.05
    resumed = RetrievalAugmentedPlugin(k=4, **META)
    resumed.load_state_dict(roundtrip(plugin.state_dict()))  # tensors come back on the CPU
    resumed._to_device("cuda")  # what the first callback on a CUDA strategy does
    assert resumed.memory.device.type == "cuda" and len(resumed.memory) == len(plugin.memory)


@pytest.mark.cuda
def test_meta_cache_runs_on_cuda_like_on_cpu():
    from test_baseline_plugins import make_scenario

    scenario = make_scenario(spread=2.0, augment=False)
    args = dict(k=3, meta_params="backbone.net.4", meta_cache=True, meta_cache_views=2, **{**META, "meta_ways": 3})
    cpu = model_tensors(_mlp_run(scenario, RetrievalAugmentedPlugin(**args)))
    gpu = model_tensors(_mlp_run(scenario, RetrievalAugmentedPlugin(**args), device="cuda"))
    assert all(torch.allclose(cpu[k].float(), gpu[k].float(), atol=1e-3) for k in cpu)


def test_runner_runs_raml_and_knn_and_refuses_a_missing_external_corpus(tmp_path):
    from avalanche_fscl.benchmarks import ConfigError, config_from_dict, run_benchmark
    from test_runner import quick_config

    args = {"raml": {"meta_episodes": 20, "meta_ways": 4}}
    cfg = config_from_dict(quick_config(tmp_path, strategies=["prototype", "knn", "raml"], strategy_args=args))
    results = run_benchmark(cfg, command="pytest", progress=False, log=lambda *_: None)
    acc = {r["strategy"]: r["table"]["sessions"][-1]["acc"] for r in results["runs"]}
    assert set(acc) == {"prototype", "knn", "raml"} and all(a > 0.3 for a in acc.values())  # 10 classes: chance 0.1
    base = {r["strategy"]: r["base_session"]["source"] for r in results["runs"]}
    assert base["prototype"] == "trained" and base["knn"] == base["raml"] == "cache", "one shared base session"

    bad = config_from_dict(quick_config(tmp_path / "bad", strategies=["raml_external"]))
    with pytest.raises(ConfigError, match="strategy raml_external: memory='stream\\+external' but the stream 'digits_fscil' has no external corpus"):
        run_benchmark(bad, command="pytest", progress=False, log=lambda *_: None)
    assert not (tmp_path / "bad" / "out").exists(), "nothing written"
