"""The strategy contract: a registered strategy that brings its own model, optimizer, base
training, schedule, stateful plugin and extra column runs through the unchanged runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from avalanche.core import SupervisedPlugin

import own_strategy
from avalanche_fscl.benchmarks import ConfigError, config_from_dict, run_benchmark
from avalanche_fscl.strategies import (
    FSCILStrategy,
    STRATEGIES,
    SessionSchedule,
    StrategyContext,
    StrategySpec,
    create_strategy,
    make_spec,
    register_strategy,
    require_state_dicts,
)
from avalanche_fscl.streams import digits_fscil

pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning")

OWN = {
    "suite": "contract",
    "stream": {"name": "digits_fscil", "args": {}},
    "model": {"backbone": "conv4_small", "head": "cosine"},
    "train": {"batch_size": 32, "base_epochs": 4, "novel_epochs": 3},
    "strategies": ["own_everything", "finetune"],
    "columns": {"seen_classes_everywhere": {}},
    "seeds": [0],
    "wandb": {"mode": "offline", "project": "contract"},
}


def own_config(tmp: Path, out: str = "out") -> dict:
    return {**json.loads(json.dumps(OWN)), "output": str(tmp / out), "base_cache_dir": str(tmp / "cache")}


@pytest.fixture(scope="module")
def own_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    own_strategy.FIT_CALLS.clear()
    results = run_benchmark(config_from_dict(own_config(tmp)), progress=False, log=lambda s: None)
    return tmp, results


def test_own_model_optimizer_and_frozen_backbone():
    scenario = digits_fscil(seed=0)
    strategy = create_strategy("own_everything", StrategyContext(scenario, seed=0))
    model = strategy.model
    assert isinstance(model.backbone, own_strategy.MLP) and model.head_type == "cosine"
    assert isinstance(strategy.optimizer, torch.optim.Adam)
    assert [id(p) for g in strategy.optimizer.param_groups for p in g["params"]] == [id(model.weight)]
    assert strategy.schedule == SessionSchedule(base_epochs=0, novel_epochs=3, novel_lr=0.01,
                                                base_lr=0.1)  # run schedule adapted by the spec
    plugin = next(p for p in strategy.plugins if isinstance(p, own_strategy.CountingPlugin))

    spec = make_spec("own_everything")
    ctx = StrategyContext(scenario, seed=0)
    spec.fit_base_session(strategy, scenario.train_stream[0], ctx)
    strategy.mark_pretrained(0)
    strategy.train(scenario.train_stream[0])
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.weight.detach().clone()
    for s in (1, 2):
        strategy.train(scenario.train_stream[s])
    # frozen weights never entered the optimizer (Avalanche would add them) and never moved
    assert [id(p) for g in strategy.optimizer.param_groups for p in g["params"]] == [id(model.weight)]
    assert all(torch.equal(v, backbone[k]) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(model.weight, head)
    assert plugin.iterations == {1: 3, 2: 3}  # 0 epochs in session 0; 3 epochs of one batch


def test_runner_uses_every_piece(own_suite):
    _, results = own_suite
    runs = {r["strategy"]: r for r in results["runs"]}
    own = runs["own_everything"]
    assert own["hparams"] == {"hidden": 32, "fit_steps": 300, "novel_epochs": 3, "seed": 0}
    assert own["table"]["sessions"][0]["acc"] > 0.8, "fit_base_session trained the base session (chance 0.25)"
    assert own_strategy.FIT_CALLS == [0]
    # the custom base training never shares a cache entry with the baselines
    assert own["base_session"]["source"] == runs["finetune"]["base_session"]["source"] == "trained"
    assert own["base_session"]["key"] != runs["finetune"]["base_session"]["key"]


def test_extra_columns_in_results_markdown_and_wandb(own_suite):
    from avalanche_fscl.benchmarks.wandb_logger import read_offline_run

    tmp, results = own_suite
    runs = {r["strategy"]: r for r in results["runs"]}
    assert runs["own_everything"]["columns"]["seen_classes"]["values"] == [0.4, 0.6, 0.8, 1.0]
    for r in runs.values():  # the config's column applies to every strategy
        assert r["columns"]["seen_everywhere"]["values"] == [0.4, 0.6, 0.8, 1.0]
    assert "seen_classes" not in runs["finetune"]["columns"]
    summary = results["summary"]
    assert summary["columns"][-2:] == ["seen classes (last)", "seen (all) (last)"]
    md = (tmp / "out" / "results.md").read_text()
    assert "### seen classes after each session (%)" in md
    assert "| own_everything | 40.00 | 60.00 | 80.00 | 100.00 |" in md
    runs_wb = [read_offline_run(p) for p in sorted((tmp / "out" / "wandb").glob("offline-run-*"))]
    own_wb = next(r for r in runs_wb if r["name"] == "digits_fscil/own_everything/seed0")
    logged = {row["session"]: row["columns/seen_classes"] for row in own_wb["history"] if "columns/seen_classes" in row}
    assert logged == {0: 0.4, 1: 0.6, 2: 0.8, 3: 1.0}


def test_cached_custom_base_session_is_reused(own_suite, tmp_path):
    tmp, first = own_suite
    data = own_config(tmp, out="again")
    data["strategies"] = ["own_everything"]
    data["wandb"] = {"mode": "off"}
    again = run_benchmark(config_from_dict(data), progress=False, log=lambda s: None)
    assert own_strategy.FIT_CALLS == [0], "the second suite loaded the cached fit"
    (run,) = again["runs"]
    assert run["base_session"]["source"] == "cache"
    assert run["table"] == next(r for r in first["runs"] if r["strategy"] == "own_everything")["table"]


class NoState(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.seen = []


class DeclaredStateless(SupervisedPlugin):
    stateless = True


def test_plugin_without_state_dict_is_an_error_naming_its_class(tmp_path):
    with pytest.raises(TypeError, match=r"NoState \(0:NoState\) has no state_dict\(\)/load_state_dict\(\)"):
        require_state_dicts({"0:NoState": NoState()})
    require_state_dicts({"0:DeclaredStateless": DeclaredStateless()})  # allowed

    @register_strategy("_no_state_for_test")
    class Bad(StrategySpec):
        """A strategy whose plugin cannot be checkpointed."""

        def plugins(self, ctx):
            return [NoState()]

    try:
        data = own_config(tmp_path)
        data.update(strategies=["_no_state_for_test"], columns={}, wandb={"mode": "off"})
        with pytest.raises(TypeError, match="NoState"):
            run_benchmark(config_from_dict(data), progress=False, log=lambda s: None)
        assert not (tmp_path / "out" / "runs").exists()
    finally:
        STRATEGIES.pop("_no_state_for_test")


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown strategy 'nope'; allowed: .*finetune"):
        make_spec("nope")
    with pytest.raises(ValueError, match=r"strategy_args.replay.memory: unknown hyper-parameter; allowed: mem_per_class, seed, epochs"):
        make_spec("replay", {"memory": 3})
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("finetune")(type("X", (StrategySpec,), {}))
    with pytest.raises(TypeError, match="decorates a StrategySpec subclass"):
        register_strategy("_fn")(lambda: [])
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 0 or None, got -1"):
        make_spec("joint", {"epochs": -1})
    with pytest.raises(TypeError, match="context must be a StrategyContext"):
        create_strategy("finetune", None)
    assert make_spec("replay", seed=7).seed == 7 and make_spec("replay", {"seed": 3}, seed=7).seed == 3


def test_unknown_column_and_bad_hyperparameter_values_fail_before_any_output(tmp_path):
    data = own_config(tmp_path)
    data["columns"] = {"nope": {}}
    with pytest.raises(ConfigError, match=r"columns.nope: unknown column; allowed: heldout_fewshot, seen_classes_everywhere"):
        run_benchmark(config_from_dict(data), progress=False)
    data = own_config(tmp_path)
    data.update(strategies=["replay"], strategy_args={"replay": {"mem_per_class": 0}})
    with pytest.raises(ConfigError, match=r"strategy_args.replay: mem_per_class must be an integer >= 1, got 0"):
        run_benchmark(config_from_dict(data), progress=False)
    assert not (tmp_path / "out").exists()


class LabelCounter(SupervisedPlugin):
    stateless = True

    def __init__(self):
        super().__init__()
        self.labels: dict[int, list[int]] = {}

    def after_training_iteration(self, strategy, *args, **kwargs):
        self.labels.setdefault(strategy.session, []).extend(strategy.mb_y.tolist())


def test_balanced_batches_only_in_incremental_sessions():
    scenario = digits_fscil(seed=0)
    counts = {}
    for balanced in (False, True):
        counter = LabelCounter()
        model = make_spec("finetune").build_model(StrategyContext(scenario, seed=0))
        strategy = FSCILStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                 schedule=SessionSchedule(1, 0.1, 5, 0.01), plugins=[counter],
                                 train_mb_size=32, cumulative=True, balanced=balanced)
        for s in (0, 1):
            torch.manual_seed(s)
            strategy.train(scenario.train_stream[s])
        counts[balanced] = counter.labels
    assert counts[True][0] == counts[False][0], "the base session trains exactly as without balancing"
    novel = scenario.session_classes[1]
    share = {b: sum(y in novel for y in c[1]) / len(c[1]) for b, c in counts.items()}
    # session 1 holds all base samples (~500) + 10 novel shots: 2% unbalanced, 2 of 6 classes balanced
    assert share[False] < 0.05 and share[True] > 0.2, share


class _BatchRecorder(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.batches = []

    def before_forward(self, strategy, **kwargs):
        self.batches.append([t.detach().clone() for t in strategy.mbatch])


def _train_sessions(scenario, materialize_mb: float, sessions=(0, 1)):
    rec = _BatchRecorder()
    model = make_spec("finetune").build_model(StrategyContext(scenario, seed=0))
    strategy = FSCILStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                             schedule=SessionSchedule(2, 0.1, 3, 0.01), plugins=[rec], train_mb_size=32,
                             materialize_mb=materialize_mb)
    flags = []
    for s in sessions:
        torch.manual_seed(s)
        strategy.train(scenario.train_stream[s])
        flags.append(strategy.materialized)
    return rec.batches, model.state_dict(), torch.get_rng_state(), flags


def _assert_same_training(a, b):
    assert len(a[0]) == len(b[0]) > 0
    assert all(len(x) == len(y) == 3 and all(torch.equal(u, v) for u, v in zip(x, y)) for x, y in zip(a[0], b[0]))
    assert all(torch.equal(a[1][k], b[1][k]) for k in b[1]), "same weights"
    assert torch.equal(a[2], b[2]), "same random numbers drawn"


def test_materialized_sessions_train_bit_identically_and_random_transforms_never_materialize():
    from avalanche_fscl.streams import RandomCropFlip, ToFloatNormalize, TensorImageDataset, fscil_benchmark

    scenario = digits_fscil(seed=0)
    per_sample, sliced = _train_sessions(scenario, 0), _train_sessions(scenario, 1024)
    assert per_sample[3] == [False, False] and sliced[3] == [True, True]
    _assert_same_training(per_sample, sliced)
    assert _train_sessions(scenario, 1e-3, sessions=(0,))[3] == [False], "over the budget: per-sample"
    with pytest.raises(ValueError, match=r"materialize_mb=-1: must be >= 0"):
        FSCILStrategy(model=torch.nn.Linear(2, 2), optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1),
                      materialize_mb=-1)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (120, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(120) % 6
    norm = ToFloatNormalize([0.5], [0.25])
    augmented = fscil_benchmark(TensorImageDataset(x, y), TensorImageDataset(x, y), base_classes=4, ways=2, shots=5, seed=0,
                                train_transform=lambda t: RandomCropFlip(padding=2)(norm(t)), eval_transform=norm)
    per_sample, probed = _train_sessions(augmented, 0), _train_sessions(augmented, 1024)
    assert probed[3] == [False, False], "a random transform is detected and keeps the per-sample path"
    _assert_same_training(per_sample, probed)  # the probe restored every generator it drew from


@pytest.mark.cuda
def test_materialized_session_lives_on_the_gpu_and_gives_the_same_batches():
    scenario = digits_fscil(seed=0)
    runs = {}
    for mb in (0, 1024):
        rec = _BatchRecorder()
        model = make_spec("finetune").build_model(StrategyContext(scenario, seed=0))
        strategy = FSCILStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                 schedule=SessionSchedule(2, 0.1, 3, 0.01), plugins=[rec], train_mb_size=32,
                                 device="cuda", materialize_mb=mb)
        torch.manual_seed(0)
        strategy.train(scenario.train_stream[0])
        runs[mb] = (rec.batches, strategy.materialized, strategy.dataloader)
    assert runs[1024][1] and not runs[0][1]
    assert all(t.is_cuda for t in runs[1024][2].dataset.columns)
    assert all(torch.equal(u, v) for x, y in zip(runs[0][0], runs[1024][0]) for u, v in zip(x, y))


def test_a_plugin_only_method_shares_the_baselines_base_session(tmp_path):
    data = own_config(tmp_path)
    data.update(strategies=["finetune", "fscl_no_meta"], columns={}, wandb={"mode": "off"})
    res = run_benchmark(config_from_dict(data), progress=False, log=lambda s: None)
    info = {r["strategy"]: r["base_session"] for r in res["runs"]}
    assert info["finetune"]["source"] == "trained" and info["fscl_no_meta"]["source"] == "cache"
    assert info["finetune"]["key"] == info["fscl_no_meta"]["key"]


def test_fscl_base_epochs_trade_supervised_epochs_for_meta_learning():
    from avalanche_fscl.strategies.template import SessionSchedule

    run = SessionSchedule(base_epochs=8, base_lr=0.1, novel_epochs=20, novel_lr=0.01)
    assert make_spec("fscl").schedule(run) == run  # default: the baselines' base training, shareable
    own = make_spec("fscl", {"base_epochs": 3, "epochs": 2}).schedule(run)
    assert (own.base_epochs, own.novel_epochs, own.base_lr, own.novel_lr) == (3, 2, 0.1, 0.01)
    with pytest.raises(ValueError, match=r"base_epochs must be an integer >= 0 or None, got -2"):
        make_spec("fscl", {"base_epochs": -2})


def test_fscl_meta_ablations_switch_off_session_meta_learning():
    on = {"session_meta_episodes": 50, "session_meta_memory": 5}
    assert make_spec("fscl", on).plugin_args["session_meta_episodes"] == 50
    for name in ("fscl_no_meta", "fscl_no_session_meta", "fscl_fast_only"):
        args = make_spec(name, {"session_meta_lr": 0.01}).plugin_args
        assert (args["session_meta_episodes"], args["session_meta_memory"]) == (0, 0), name
        with pytest.raises(ValueError, match=rf"strategy_args\.{name}\.session_meta_episodes: unknown hyper-parameter"):
            make_spec(name, on)
    assert make_spec("fscl_no_meta").plugin_args["meta"] is False
    assert make_spec("fscl_no_session_meta").plugin_args["meta"] is True  # the base session's meta-learning kept


def test_fscl_ablations_without_the_restart_have_no_row_training():
    on = {"session_meta_episodes": 50, "session_meta_memory": 5, "fast_from_slow": True, "row_steps": 100}
    assert make_spec("fscl", on).plugin_args["row_steps"] == 100
    args = make_spec("fscl_no_row_training", {k: v for k, v in on.items() if k != "row_steps"}).plugin_args
    assert (args["row_steps"], args["fast_from_slow"]) == (0, True)
    for name in ("fscl_no_fast_from_slow", "fscl_no_session_meta"):
        assert make_spec(name).plugin_args["row_steps"] == 0, name
        with pytest.raises(ValueError, match=rf"strategy_args\.{name}\.row_steps: unknown hyper-parameter"):
            make_spec(name, {"row_steps": 100})
    with pytest.raises(ValueError, match=r"row_steps > 0 needs fast_from_slow=True .* or row_memory > 0"):
        make_spec("fscl", {"row_steps": 100})


def test_fscl_ablations_keep_or_remove_the_rows_learning_stored_features():
    """On an FSCIL stream the rows learn stored features (``row_memory``): every ablation but
    ``fscl_no_row_training`` can keep that part (the configs give it to all but that one and
    ``fscl_slow_only``, no fast learning at all)."""
    rows = {"row_steps": 25, "row_memory": 5}
    for name in ("fscl", "fscl_no_step1", "fscl_no_step2", "fscl_no_meta", "fscl_fast_only", "fscl_slow_only"):
        args = make_spec(name, rows).plugin_args
        assert (args["row_steps"], args["row_memory"]) == (25, 5), name
    for name in ("fscl_no_row_training",):
        args = make_spec(name).plugin_args
        assert (args["row_steps"], args["row_memory"]) == (0, 0), name
        with pytest.raises(ValueError, match=rf"strategy_args\.{name}\.row_memory: unknown hyper-parameter"):
            make_spec(name, {"row_memory": 5})


class _GradRecorder(SupervisedPlugin):
    """The loss and backbone gradient of the first step with finite gradients (fp16's first
    steps overflow while its loss scale backs off: skipped, the weights unchanged), as the
    plugins see them."""

    def __init__(self):
        super().__init__()
        self.loss, self.grad, self.dtype, self.skipped = None, None, None, 0

    def before_update(self, strategy, **kwargs):
        grad = next(strategy.model.parameters()).grad.detach()
        if self.grad is None and not torch.isfinite(grad).all():
            self.skipped += 1
        elif self.grad is None:
            self.loss, self.dtype, self.grad = strategy.loss.item(), strategy.mb_output.dtype, grad.clone()


def _one_session(autocast, epochs: int = 3, seed: int = 0, device: str = "cpu"):
    scenario = digits_fscil(seed=0)
    rec = _GradRecorder()
    model = make_spec("finetune").build_model(StrategyContext(scenario, seed=seed))
    strategy = FSCILStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                             schedule=SessionSchedule(epochs, 0.1, 3, 0.01), plugins=[rec], train_mb_size=32,
                             autocast=autocast, device=device)
    torch.manual_seed(0)
    strategy.train(scenario.train_stream[0])
    res = strategy.eval(scenario.test_stream[:1])
    acc = next(v for k, v in res.items() if k.startswith("Top1_Acc_Stream"))
    return rec, model, acc


def test_autocast_trains_in_mixed_precision_with_fp32_logits_weights_and_true_gradients():
    ref, ref_model, ref_acc = _one_session(None)
    for autocast in ("bf16", "fp16"):
        rec, model, acc = _one_session(autocast)
        assert rec.dtype == torch.float32, "the loss and the metrics see fp32 logits"
        assert all(p.dtype == torch.float32 for p in model.parameters()), "the weights stay fp32"
        if rec.skipped == 0:  # the same first batch and weights: equal up to the precision's rounding
            assert rec.loss == pytest.approx(ref.loss, rel=0.02)
            cos = torch.nn.functional.cosine_similarity(rec.grad.flatten(), ref.grad.flatten(), dim=0)
            assert cos > 0.99 and (rec.grad.norm() / ref.grad.norm()).item() == pytest.approx(1.0, abs=0.05), autocast
        else:  # a later batch, the same (initial) weights: the same scale, not 2**k times it
            assert autocast == "fp16" and 0.5 < (rec.grad.norm() / ref.grad.norm()).item() < 2, rec.skipped
        assert acc > 0.9 and abs(acc - ref_acc) < 0.05, (autocast, acc, ref_acc)  # 4-way base session, chance 0.25
    with pytest.raises(ValueError, match=r"autocast='fp8'; allowed: None, 'bf16', 'fp16'"):
        FSCILStrategy(model=torch.nn.Linear(2, 2), optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1),
                      autocast="fp8")


def test_fp16_skips_a_step_whose_gradients_overflow():
    scenario = digits_fscil(seed=0)
    model = make_spec("finetune").build_model(StrategyContext(scenario, seed=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class Overflow(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            strategy.loss = strategy.loss * float("inf")  # every gradient inf/nan

    strategy = FSCILStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                             schedule=SessionSchedule(1, 0.1, 1, 0.01), plugins=[Overflow()], train_mb_size=32,
                             autocast="fp16")
    torch.manual_seed(0)
    strategy.train(scenario.train_stream[0])
    weights = {k: v for k, v in model.state_dict().items() if v.is_floating_point() and "running" not in k}
    assert all(torch.equal(v, before[k]) for k, v in weights.items()), "no step was taken"
    assert strategy._scaler.get_scale() < 65536.0, "the loss scale backed off"


@pytest.mark.cuda
def test_autocast_on_cuda_learns_like_fp32():
    _, _, ref = _one_session(None, device="cuda")
    for autocast in ("bf16", "fp16"):
        rec, model, acc = _one_session(autocast, device="cuda")
        assert rec.dtype == torch.float32 and next(model.parameters()).is_cuda
        assert acc > 0.9 and abs(acc - ref) < 0.05, (autocast, acc, ref)
