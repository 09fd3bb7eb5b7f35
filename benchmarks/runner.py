"""The benchmark runner: strategies x seeds over one stream, checkpointed after every session.

Layout of an output folder::

    config.yaml                          resolved config (what --resume reads)
    run.json                             provenance: suite id, command, environment per invocation
    checkpoints/<strategy>/seed<k>.pt    state after the last finished session (deleted when done)
    runs/<strategy>/seed<k>.json         a finished (strategy, seed): FSCIL table, columns, timings,
                                         the machine of each session (resumes may move)
    results.json / results.md / sessions.png   the suite's report
    wandb/                               offline W&B runs (--wandb offline): complete runs only
    wandb-setaside/                      offline files of killed attempts, replaced on --resume

One (strategy, seed) run (:class:`_Run`), from stream to metric:

1. build: the registered :class:`~avalanche_fscl.strategies.StrategySpec` gives the model,
   optimizer, schedule, plugins and extra columns; they become an :class:`FSCILStrategy`
   with an :class:`FSCILMetric` evaluator (:meth:`_Run.__init__`);
2. restore the checkpoint of the last finished session, if any (:meth:`_Run._restore`);
3. for each session ``s``: seed every RNG from ``(seed, s)``; train (:meth:`_Run._train`:
   session 0 loads the shared base session or fits and caches it); evaluate on
   ``test_stream[:s+1]`` and the extra columns (:meth:`_Run._evaluate`); report progress
   and the W&B row; checkpoint (:meth:`_Run._checkpoint`);
4. write ``runs/<strategy>/seed<k>.json`` and drop the checkpoint (:meth:`_Run._finish`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import random
import resource
import secrets
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ..plugins import FSCILMetric
from ..streams import FSCILScenario, get_stream
from ..streams.data import cache_dir
from ..strategies import (
    EvalColumn,
    FSCILStrategy,
    StrategyContext,
    create_column,
    create_strategy,
    make_spec,
    require_state_dicts,
)
from .cache import BaseSessionCache, CacheError, code_fingerprint, package_versions
from .config import ConfigError, RunConfig, check_light, config_from_dict, config_to_dict, read_yaml
from .io import load_torch, save_torch, write_json, write_text
from .machine import cpu_model, machine_name, restores_torch_threads
from .report import aggregate, flat_table, write_report

__all__ = [
    "run_benchmark",
    "report_benchmark",
    "resume_config",
    "check_config",
    "BenchmarkError",
    "RunInterrupted",
]

CHECKPOINT_FORMAT = "avalanche-fscl/run-checkpoint"
CHECKPOINT_VERSION = 2


class BenchmarkError(RuntimeError):
    """A run cannot start or continue (e.g. the output folder already holds another run)."""


class RunInterrupted(BenchmarkError):
    """Ctrl-C: the message says where the run stopped and how to continue it."""


def seed_everything(seed: int, session: int) -> None:
    """Seed Python, NumPy and torch from ``(seed, session)``.

    Every session starts from the same RNG state whether the previous sessions were
    trained in this process, loaded from a checkpoint or from the base-session cache.
    """
    s = int.from_bytes(hashlib.sha256(f"{seed}:{session}".encode()).digest()[:4], "little")
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _env_info(device: str) -> dict[str, Any]:
    import avalanche

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
    }
    try:
        root = Path(__file__).resolve().parent
        git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, timeout=5, cwd=root).stdout.strip()  # noqa: E731
        info["git_commit"] = git("rev-parse", "HEAD") or None
        info["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no")) if info["git_commit"] else None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = info["git_dirty"] = None
    return info


def _peak_memory_mb(device: str) -> dict[str, float]:
    out = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.startswith("cuda"):
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _remove_empty_dirs(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents up to (not including) ``stop`` while they are empty."""
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


class _Suite:
    """What every (strategy, seed) run of one suite shares: config, folders, progress, ids."""

    def __init__(self, cfg: RunConfig, out: Path, suite_id: str, progress: Callable[..., None]):
        self.cfg, self.out, self.suite_id, self.progress = cfg, out, suite_id, progress
        self.base_dir = Path(cfg.base_cache_dir) if cfg.base_cache_dir else cache_dir() / "base_sessions"
        self.position: tuple[str, int, int] | None = None  # (strategy, seed, last finished session)

    def wandb_id(self, name: str) -> str:
        """The W&B run id of ``name`` (a strategy/seed or the summary): stable across resumes."""
        return hashlib.sha256(f"{self.suite_id}/{name}".encode()).hexdigest()[:16]


class _Run:
    """One (strategy, seed): train and evaluate session by session, checkpointing each."""

    def __init__(self, suite: _Suite, scenario: FSCILScenario, name: str, seed: int):
        from avalanche.training.plugins import EvaluationPlugin

        cfg = suite.cfg
        self.suite, self.cfg, self.scenario, self.name, self.seed = suite, cfg, scenario, name, seed
        self.ckpt_path = suite.out / "checkpoints" / name / f"seed{seed}.pt"
        self.result_path = suite.out / "runs" / name / f"seed{seed}.json"
        self.ctx = StrategyContext(scenario, config=cfg, seed=seed, device=cfg.device)
        self.spec = make_spec(name, cfg.strategy_args.get(name), seed=seed)

        model = self.spec.build_model(self.ctx)
        self.metric = FSCILMetric(stream_name="test")
        self.plugins = self.spec.plugins(self.ctx)
        self.columns: list[EvalColumn] = [
            *self.spec.columns(self.ctx), *(create_column(c, self.ctx, a) for c, a in cfg.columns.items())
        ]
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ConfigError(f"columns: two extra columns of {name!r} share a name: {names}")
        self._stateful = {f"{i}:{type(p).__name__}": p for i, p in enumerate(self.plugins)}
        self._stateful.update({f"column:{c.name}": c for c in self.columns if not c.stateless})
        require_state_dicts(self._stateful)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified")
            evaluator = EvaluationPlugin(self.metric, loggers=[])
        t = cfg.train
        self.strategy: FSCILStrategy = create_strategy(
            self.spec, self.ctx, model=model, spec_plugins=self.plugins, train_mb_size=t.batch_size,
            eval_mb_size=t.eval_batch_size, evaluator=evaluator, channels_last=t.channels_last,
            materialize_mb=t.materialize_mb, autocast=t.autocast,
        )
        self.base_cache = self._base_cache()
        self.base_info: dict[str, Any] | None = None
        self.column_values: dict[str, list[float | None]] = {c.name: [] for c in self.columns}
        self.elapsed, self.session_times = 0.0, []
        self.session_machines: list[str | None] = []  # what computed each session (a resume may move)
        self.machine = machine_name(cfg.device)
        self.wandb = None

    # ------------------------------------------------------------------ building
    def _base_cache(self) -> BaseSessionCache | None:
        own = self.spec.base_session_key(self.ctx)
        if own is None:
            return None
        cfg = self.cfg
        key = {
            "stream": cfg.stream.name, "stream_args": cfg.stream.args,
            "data_root": str(Path(cfg.data_root).resolve()) if cfg.data_root else None,
            "seed": self.seed, "device_type": torch.device(cfg.device).type,
            # the spec's own source counts only when it trains session 0 itself (its key says
            # "custom"); plugin-only strategies share the baselines' base session
            "strategy": own, "code": code_fingerprint(*([self.spec] if "custom" in own else [])),
            "versions": package_versions(),
        }
        return BaseSessionCache(self.suite.base_dir, key, cfg.base_cache, label=f"{cfg.stream.name}-seed{self.seed}")

    # ------------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        start = self._restore()
        self._open_wandb(start)
        for s in range(start, self.scenario.n_sessions):
            t0 = time.perf_counter()
            seed_everything(self.seed, s)
            self._train(s)
            self._evaluate(s)
            self.session_times.append(time.perf_counter() - t0)
            self.session_machines.append(self.machine)
            self.elapsed += self.session_times[-1]
            self._record(s)
            self._checkpoint(s)
        return self._finish()

    def _restore(self) -> int:
        """Load the checkpoint (if any); return the first session still to run."""
        if not self.ckpt_path.exists():
            return 0
        state = load_torch(self.ckpt_path, self.cfg.device)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or state.get("version") != CHECKPOINT_VERSION:
            found = state.get("version") if isinstance(state, dict) else None
            raise BenchmarkError(
                f"{self.ckpt_path}: checkpoint format version {found!r}, but this avalanche-fscl reads "
                f"version {CHECKPOINT_VERSION}; finish the run with the version that wrote it, or delete "
                f"the file to restart {self.name}/seed{self.seed} from session 0"
            )
        if (state["strategy"], state["seed"]) != (self.name, self.seed):
            raise BenchmarkError(f"{self.ckpt_path}: holds {state['strategy']}/seed{state['seed']}, not {self.name}/seed{self.seed}")
        if state["code"] != self._code():
            warnings.warn(
                f"{self.name}/seed{self.seed}: resuming a checkpoint written by other code "
                f"(fingerprint {state['code']}, now {self._code()}); sessions after "
                f"{state['session']} run with the current code", RuntimeWarning, stacklevel=2,
            )
        s = self.strategy
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        for key, obj in self._stateful.items():
            obj.load_state_dict(state["states"][key])
        self.metric.load_state_dict(state["metric"])
        for k, v in state["clock"].items():
            setattr(s.clock, k, v)
        start = state["session"] + 1
        s.session = state["session"]
        if s.cumulative:
            s.remember(self.scenario.train_stream[:start])
        self.column_values = {k: list(v) for k, v in state["column_values"].items()}
        self.elapsed, self.session_times = state["elapsed"], list(state["session_times"])
        self.session_machines = list(state.get("session_machines") or [None] * len(self.session_times))
        self.base_info = state["base_session"]
        return start

    def _code(self) -> str:
        return code_fingerprint(self.spec, *self.plugins, *self.columns)

    def _train(self, s: int) -> None:
        """Train session ``s``. Session 0: the shared cached weights (0 epochs in the loop) or
        the spec's ``fit_base_session`` plus the loop, whose fitted weights are cached."""
        exp, strategy = self.scenario.train_stream[s], self.strategy
        if s > 0:
            strategy.train(exp)
            return
        cache = self.base_cache
        try:
            cached = cache.load() if cache is not None else None
        except CacheError as e:
            raise BenchmarkError(str(e)) from None
        if cached is not None:
            strategy.model.load_state_dict(cached)
            strategy.mark_pretrained(0)
        else:
            self.spec.fit_base_session(strategy, exp, self.ctx)
        strategy.capture_fitted_state = cached is None and cache is not None
        strategy.train(exp)
        strategy.capture_fitted_state = False
        if cache is None:
            self.base_info = {"source": "trained", "cache": "none (strategy opts out)", "file": None, "key": None}
            return
        if cached is None:
            cache.save(strategy.fitted_state, machine=self.machine)
            strategy.fitted_state = None
        self.base_info = cache.describe("cache" if cached is not None else "trained")

    def _evaluate(self, s: int) -> None:
        self.strategy.eval(self.scenario.test_stream[: s + 1])
        for col in self.columns:
            value = col.evaluate(self.strategy, s)
            self.column_values[col.name].append(None if value is None else float(value))

    def _session_values(self, s: int) -> dict[str, float]:
        """The W&B row of session ``s`` (FSCIL metrics and extra columns; fractions)."""
        table = self.metric.table(upto=s)
        row = table.sessions[-1]
        values = {"FSCIL/session_acc": row.acc, "FSCIL/base_acc": row.base, "FSCIL/novel_acc": row.novel,
                  "FSCIL/hm": row.hm, "FSCIL/AA": table.aa, "FSCIL/PD": table.pd}
        values.update({f"FSCIL/acc_exp/Exp{j:03d}": a for j, a in enumerate(table.matrix[-1]) if a == a})
        values.update({f"columns/{k}": v[s] for k, v in self.column_values.items() if v[s] is not None})
        return values

    def _record(self, s: int) -> None:
        acc = self.metric.table(upto=s).sessions[-1].acc
        self.suite.progress(self.name, self.seed, s, acc)
        if self.wandb is not None:
            self.wandb.log_session(s, self._session_values(s))

    def _checkpoint(self, s: int) -> None:
        save_torch(self.ckpt_path, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "code": self._code(),
            "strategy": self.name, "seed": self.seed, "session": s,
            "model": self.strategy.model.state_dict(), "optimizer": self.strategy.optimizer.state_dict(),
            "states": {k: obj.state_dict() for k, obj in self._stateful.items()},
            "metric": self.metric.state_dict(),
            "clock": {k: v for k, v in vars(self.strategy.clock).items() if isinstance(v, int)},
            "column_values": self.column_values, "elapsed": self.elapsed,
            "session_times": self.session_times, "session_machines": self.session_machines,
            "base_session": self.base_info,
        })
        self.suite.position = (self.name, self.seed, s)

    def _open_wandb(self, start: int) -> None:
        """Open this run's W&B run. A resumed offline run sets the killed attempt's files aside
        and re-logs the checkpointed sessions into a clean run with the same id (so
        ``wandb/`` syncs completely and the history is whole and monotonic); an online
        run continues on the server (``resume="allow"``)."""
        cfg = self.cfg
        if cfg.wandb.mode == "off":
            return
        from .wandb_logger import WandbRunLogger, set_aside_offline_runs

        run_id = self.suite.wandb_id(f"{self.name}/seed{self.seed}")
        set_aside_offline_runs(self.suite.out / "wandb", run_id, self.suite.out / "wandb-setaside")
        self.wandb = WandbRunLogger(
            mode=cfg.wandb.mode, project=cfg.wandb.project, group=cfg.suite, entity=cfg.wandb.entity,
            name=f"{cfg.stream.name}/{self.name}/seed{self.seed}", tags=cfg.wandb.tags,
            config={**config_to_dict(cfg), "strategy": self.name, "seed": self.seed,
                    "strategy_hparams": self.spec.hparams},
            dir=self.suite.out, run_id=run_id, resume=cfg.wandb.mode == "online",
        )
        if cfg.wandb.mode == "offline":
            for s in range(start):
                self.wandb.log_session(s, self._session_values(s))

    def _finish(self) -> dict[str, Any]:
        table = self.metric.table()
        result = {
            "strategy": self.name, "seed": self.seed, "hparams": self.spec.hparams,
            "table": table.to_dict(),
            "columns": {c.name: {"title": c.title or c.name, "higher_is_better": c.higher_is_better,
                                 "values": self.column_values[c.name]} for c in self.columns},
            "base_session": self.base_info, "wall_time_s": self.elapsed,
            "session_times_s": self.session_times, "session_machines": self.session_machines,
            "peak_memory": _peak_memory_mb(self.cfg.device),
        }
        if self.wandb is not None:
            self.wandb.log_summary({"AA": table.aa, "PD": table.pd, "last_acc": table.sessions[-1].acc,
                                    **{f"columns/{k}": v[-1] for k, v in self.column_values.items()}})
            names = list(self.column_values)
            self.wandb.log_results_table(
                ["session", "acc", "base", "novel", "hm", *names],
                [[r.session, r.acc, r.base, r.novel, r.hm, *(self.column_values[n][i] for n in names)]
                 for i, r in enumerate(table.sessions)],
                key="FSCIL/table",
            )
            self.wandb.finish()
        write_json(self.result_path, result)
        self.ckpt_path.unlink(missing_ok=True)
        _remove_empty_dirs(self.ckpt_path.parent, self.suite.out)
        return result


# --------------------------------------------------------------------------- suites
def resume_config(output: str | os.PathLike, *, what: str = "--resume") -> RunConfig:
    """The config of the run in ``output`` (its ``config.yaml``); ``what`` names the argument in errors."""
    path = Path(output) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{what} {output}: no run there ({path} not found)")
    data = read_yaml(path, what=what)
    if data.get("base_cache") is None or data.get("base_cache") not in ("on", "off", "refresh"):
        # folders written before base_cache became a mode held a cache folder (or null) there
        data["base_cache_dir"] = data.get("base_cache")
        data["base_cache"] = "on"
    return config_from_dict(data)


def check_config(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` for an unknown strategy, hyper-parameter or column, or a
    device this machine lacks (stream arguments and backbones: :func:`~.config.check_light`)."""
    from ..strategies import COLUMNS, STRATEGIES, get_strategy

    check_light(cfg)
    for name in [*cfg.strategies, *cfg.strategy_args]:
        if name not in STRATEGIES:
            raise ConfigError(f"strategies: unknown {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    for name, args in cfg.strategy_args.items():
        allowed = get_strategy(name).hyperparameters()
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise ConfigError(
                f"strategy_args.{name}.{unknown[0]}: unknown hyper-parameter; allowed: {', '.join(allowed) or '(none)'}"
            )
    for name in cfg.columns:
        if name not in COLUMNS:
            raise ConfigError(f"columns.{name}: unknown column; allowed: {', '.join(sorted(COLUMNS)) or '(none registered)'}")
    for name in cfg.strategies:  # a value the strategy rejects (e.g. mem_per_class=0) fails here, not mid-run
        try:
            make_spec(name, cfg.strategy_args.get(name), seed=cfg.seeds[0])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"strategy_args.{name}: {e}") from None


def choose_autocast(cfg: RunConfig, scenario: FSCILScenario, repeats: int = 3) -> tuple[str | None, dict[str, float]]:
    """``train.autocast: auto``: the precision in which one training step of the configured
    model (``model``, ``train.batch_size`` of the base session's images, ``channels_last``) runs
    fastest on ``cfg.device``: fp32 or bf16, and fp16 on CUDA. The probe trains a throwaway
    model and leaves the random generators as it found them.

    Returns:
        ``(None | "bf16" | "fp16", {"fp32": s, "bf16": s, ...})``: seconds per step (minimum).
    """
    import torch.nn.functional as F

    from ..models.amp import autocast_context, fastest_autocast
    from ..strategies import StrategyContext, StrategySpec

    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = StrategySpec().build_model(StrategyContext(scenario, config=cfg, seed=0, device=cfg.device)).to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        data = scenario.train_stream[0].dataset.train()
        n = min(cfg.train.batch_size, len(data))
        items = [data[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(it[0]) for it in items]).to(device)
        y = torch.as_tensor([int(it[1]) for it in items], device=device)
        if cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=cfg.train.momentum)
        model.train()

        def step(autocast: str | None) -> None:
            with autocast_context(device, autocast):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        candidates = (None, "bf16", "fp16") if device.type == "cuda" else (None, "bf16")
        best, times = fastest_autocast(step, candidates, repeats=repeats, device=device)
    return best, {k: round(v, 4) for k, v in times.items()}


def _build_scenarios(cfg: RunConfig) -> dict[int, FSCILScenario]:
    scenarios = {}
    for seed in cfg.seeds:
        try:
            scenarios[seed] = get_stream(cfg.stream.name, data_root=cfg.data_root, seed=seed, **cfg.stream.args)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"stream {cfg.stream.name} (stream.args {cfg.stream.args}): {e}") from None
    return scenarios


def _check_strategies(cfg: RunConfig, scenarios: dict[int, FSCILScenario]) -> None:
    """Each strategy's :meth:`StrategySpec.check` on the scenario, before anything is written."""
    for name in cfg.strategies:
        for seed, scenario in scenarios.items():
            spec = make_spec(name, cfg.strategy_args.get(name), seed=seed)
            try:
                spec.check(StrategyContext(scenario, config=cfg, seed=seed, device=cfg.device))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"strategy {name}: {e}") from None


@restores_torch_threads
def run_benchmark(
    cfg: RunConfig,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) a suite and write its report; returns the ``results.json`` content.

    Everything is validated and every scenario built before the output folder is created,
    so a bad config leaves nothing behind.

    Args:
        cfg: the validated config; ``cfg.output`` is the output folder (``None``:
            ``runs/<suite>/<timestamp>``, set on ``cfg``).
        resume: continue the run already in ``cfg.output`` (finished (strategy, seed)
            pairs are kept, unfinished ones restart from their last finished session).
        command: the command line, recorded in the report.
        progress: show a progress bar (stderr).
        log: where to print the final table.

    Raises:
        ConfigError: a bad config (names the key). BenchmarkError: the output folder holds
        another run, or a checkpoint cannot be read. RunInterrupted: Ctrl-C (the message
        says how to continue).
    """
    from tqdm.auto import tqdm

    check_config(cfg)
    if cfg.output is None:
        cfg.output = str(Path("runs") / cfg.suite / time.strftime("%Y%m%d-%H%M%S"))
    out = Path(cfg.output)
    if not resume and (out / "config.yaml").exists():
        raise BenchmarkError(
            f"--output {out} already holds a run; continue it with `avalanche-fscl run --resume {out}` "
            f"or choose another --output"
        )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    scenarios = _build_scenarios(cfg)
    _check_strategies(cfg, scenarios)
    environment = _env_info(cfg.device)  # at the start: the commit that ran, not a later one
    if cfg.train.autocast == "auto":
        cfg.train.autocast, environment["autocast_probe_s"] = choose_autocast(cfg, next(iter(scenarios.values())))
        print(f"train.autocast auto: step time {environment['autocast_probe_s']} -> {cfg.train.autocast}", file=sys.stderr)
    provenance = _provenance(out, resume, command, environment)
    write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    n_sessions = next(iter(scenarios.values())).n_sessions
    bar = tqdm(total=len(cfg.seeds) * len(cfg.strategies) * n_sessions, disable=not progress,
               desc=cfg.suite, unit="session", file=sys.stderr, dynamic_ncols=True)

    def on_session(strategy: str, seed: int, s: int, acc: float) -> None:
        bar.set_postfix_str(f"{strategy} seed{seed} S{s} acc={100 * acc:.1f}%")
        bar.update(1)

    suite = _Suite(cfg, out, provenance["suite_id"], on_session)
    runs = []
    try:
        for seed, scenario in scenarios.items():
            for name in cfg.strategies:
                result_path = out / "runs" / name / f"seed{seed}.json"
                if result_path.exists():
                    with open(result_path, encoding="utf-8") as f:
                        runs.append(json.load(f))
                    bar.update(n_sessions)
                    continue
                suite.position = (name, seed, -1)
                run = _Run(suite, scenario, name, seed)
                if run.ckpt_path.exists():
                    bar.update(load_torch(run.ckpt_path)["session"] + 1)
                runs.append(run.run())
    except KeyboardInterrupt:
        bar.close()
        name, seed, s = suite.position or ("?", -1, -1)
        done = f"after session {s} (checkpointed)" if s >= 0 else "before its first session finished"
        raise RunInterrupted(
            f"interrupted: {name}/seed{seed} stopped {done}; finished runs are kept in {out}; "
            f"continue with: avalanche-fscl run --resume {out}"
        ) from None
    bar.close()
    _record_invocation(out, provenance, time.perf_counter() - start)
    results = _results(cfg, provenance, next(iter(scenarios.values())).describe(), runs)
    md = write_report(out, results)
    if cfg.wandb.mode != "off":
        _log_suite_to_wandb(suite, results)
    log(md)
    return results


def _provenance(out: Path, resume: bool, command: str | None, environment: dict) -> dict[str, Any]:
    """``run.json``: the suite id (W&B run ids derive from it) and one entry per invocation."""
    path = out / "run.json"
    if resume and path.exists():
        with open(path, encoding="utf-8") as f:
            prov = json.load(f)
    else:
        prov = {"suite_id": secrets.token_hex(8), "invocations": []}
    prov["invocations"].append({"command": command, "environment": environment,
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_time_s": None})
    write_json(path, prov)
    return prov


def _record_invocation(out: Path, prov: dict[str, Any], wall_time: float) -> None:
    prov["invocations"][-1]["wall_time_s"] = wall_time
    write_json(out / "run.json", prov)


def _results(cfg: RunConfig, prov: dict[str, Any], scenario: str, runs: list[dict],
             missing: list[str] | None = None) -> dict[str, Any]:
    first = prov["invocations"][0] if prov.get("invocations") else {"command": None, "environment": {}}
    times = [i["wall_time_s"] for i in prov.get("invocations", []) if i.get("wall_time_s") is not None]
    return {
        "suite": cfg.suite,
        "command": first["command"],
        "environment": first["environment"],
        "invocations": prov.get("invocations", []),
        "config": config_to_dict(cfg),
        "scenario": scenario,
        "wall_time_s": sum(times) if times else None,
        "wall_time_s_all_sessions": sum(r["wall_time_s"] for r in runs),
        "incomplete": missing or [],
        "runs": runs,
        "summary": aggregate(runs, cfg.strategies),
    }


def report_benchmark(output: str | os.PathLike, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the report of the finished (strategy, seed) runs in ``output``.

    For a run that is still going or was stopped: the report covers what finished and
    lists the missing pairs under ``incomplete``; ``--resume`` completes it later. The
    run's own provenance (command, environment, wall time) is kept.
    """
    cfg = resume_config(output, what="report")
    out = Path(output)
    runs, missing = [], []
    for seed in cfg.seeds:
        for name in cfg.strategies:
            path = out / "runs" / name / f"seed{seed}.json"
            if path.exists():
                with open(path, encoding="utf-8") as f:
                    runs.append(json.load(f))
            else:
                missing.append(f"{name}/seed{seed}")
    if not runs:
        raise BenchmarkError(f"report {out}: no finished (strategy, seed) run to report yet")
    prov_path = out / "run.json"
    if prov_path.exists():
        with open(prov_path, encoding="utf-8") as f:
            prov = json.load(f)
    else:  # folders from before run.json: keep the provenance of the earlier report
        old = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
        prov = {"invocations": [{"command": old.get("command"), "environment": old.get("environment") or _env_info(cfg.device),
                                 "wall_time_s": old.get("wall_time_s")}]}
    scenario = _build_scenarios(dataclasses.replace(cfg, seeds=cfg.seeds[:1]))[cfg.seeds[0]]
    results = _results(cfg, prov, scenario.describe(), runs, missing=missing)
    log(write_report(out, results))
    return results


def _log_suite_to_wandb(suite: _Suite, results: dict[str, Any]) -> None:
    """One ``<stream>/summary`` run per suite: the comparison table (separate mean and std
    columns) and the per-session plot."""
    from .wandb_logger import WandbRunLogger, set_aside_offline_runs

    cfg, out = suite.cfg, suite.out
    run_id = suite.wandb_id("summary")
    set_aside_offline_runs(out / "wandb", run_id, out / "wandb-setaside")
    wb = WandbRunLogger(mode=cfg.wandb.mode, project=cfg.wandb.project, group=cfg.suite,
                        name=f"{cfg.stream.name}/summary", config=results["config"], dir=out,
                        tags=cfg.wandb.tags, entity=cfg.wandb.entity, run_id=run_id,
                        resume=cfg.wandb.mode == "online")
    columns, rows = flat_table(results["summary"])
    wb.log_results_table(columns, rows)
    wb.log_image("sessions", out / "sessions.png")
    wb.finish()
