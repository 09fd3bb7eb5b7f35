"""The benchmark runner: strategies x seeds over one stream, checkpointed after every session.

Layout of an output folder::

    config.yaml                     resolved config (what --resume reads)
    checkpoints/<strategy>/seed<k>.pt   state after the last finished session (deleted when done)
    runs/<strategy>/seed<k>.json    finished (strategy, seed): FSCIL table, timings
    results.json / results.md / sessions.png   the suite's report (written at the end)
    wandb/                          offline W&B runs (when --wandb offline)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ..models import FSCILNet, create_backbone
from ..plugins import FSCILMetric
from ..streams import FSCILScenario, get_stream
from ..streams.data import cache_dir
from ..strategies import FSCILStrategy, SessionSchedule, create_strategy
from ..strategies.registry import get_entry
from .config import ConfigError, RunConfig, config_from_dict, config_to_dict
from .io import load_torch, save_torch, write_json, write_text
from .report import aggregate, write_report

__all__ = ["run_benchmark", "report_benchmark", "resume_config", "BenchmarkError"]

CHECKPOINT_VERSION = 1


class BenchmarkError(RuntimeError):
    """A run cannot start (e.g. the output folder already holds another run)."""


def seed_everything(seed: int, session: int) -> None:
    """Seed Python, NumPy and torch from ``(seed, session)``.

    Every session starts from the same RNG state whether the previous sessions were
    trained in this process, loaded from a checkpoint or from the base-session cache.
    """
    s = int.from_bytes(hashlib.sha256(f"{seed}:{session}".encode()).digest()[:4], "little")
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class _BaseCapture:
    """Plugin that records the model right after base-session training.

    It runs first in the plugin list, so it sees the weights before other plugins'
    ``after_training_exp`` (prototypes, EWC's importance pass) touch the model.
    """

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def after_training_exp(self, strategy, *args, **kwargs):
        if strategy.experience.current_experience == 0 and strategy.train_epochs > 0:
            self.state = {k: v.detach().cpu().clone() for k, v in strategy.model.state_dict().items()}

    def __getattr__(self, name):  # every other Avalanche callback is a no-op
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)


def _env_info(device: str) -> dict[str, Any]:
    import avalanche

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def _peak_memory_mb(device: str) -> dict[str, float]:
    out = {"cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.startswith("cuda"):
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _base_cache_key(cfg: RunConfig, seed: int, base_training: str) -> str:
    from .. import __version__

    t = cfg.train
    key = {
        "version": __version__,
        "stream": cfg.stream.name,
        "stream_args": cfg.stream.args,
        "data_root": str(Path(cfg.data_root).resolve()) if cfg.data_root else None,
        "model": config_to_dict(cfg)["model"],
        "train": [t.batch_size, t.base_epochs, t.base_lr, t.momentum, t.weight_decay, t.cosine,
                  t.channels_last],
        "seed": seed,
        "base_training": base_training,
        "device_type": torch.device(cfg.device).type,
    }
    blob = json.dumps(key, sort_keys=True).encode()
    return f"{cfg.stream.name}-{cfg.model.backbone}-seed{seed}-{hashlib.sha256(blob).hexdigest()[:16]}"


def build_model(cfg: RunConfig, scenario: FSCILScenario, seed: int) -> FSCILNet:
    """The network for ``scenario``, initialised from ``seed``."""
    torch.manual_seed(seed)
    in_channels = scenario.train_stream[0].dataset[0][0].shape[0]
    backbone = create_backbone(cfg.model.backbone, in_channels=in_channels, **cfg.model.backbone_args)
    return FSCILNet(backbone, scenario.n_classes, head=cfg.model.head, scale=cfg.model.scale)


def _plugins_with_state(strategy: FSCILStrategy) -> dict[str, Any]:
    """Plugins that can be checkpointed, keyed by position and class name (stable per strategy)."""
    return {
        f"{i}:{type(p).__name__}": p
        for i, p in enumerate(strategy.plugins)
        if hasattr(p, "state_dict") and hasattr(p, "load_state_dict") and not isinstance(p, torch.nn.Module)
    }


def _clock_state(strategy: FSCILStrategy) -> dict[str, int]:
    return {k: v for k, v in vars(strategy.clock).items() if isinstance(v, int)}


class _Run:
    """One (strategy, seed): train and evaluate session by session, checkpointing each."""

    def __init__(self, cfg: RunConfig, out: Path, scenario: FSCILScenario, strategy: str, seed: int,
                 on_session: Callable[[str, int, int, dict], None]):
        self.cfg, self.out, self.scenario = cfg, out, scenario
        self.name, self.seed, self.on_session = strategy, seed, on_session
        self.entry = get_entry(strategy)
        self.ckpt_path = out / "checkpoints" / strategy / f"seed{seed}.pt"
        self.result_path = out / "runs" / strategy / f"seed{seed}.json"
        base_dir = Path(cfg.base_cache) if cfg.base_cache else cache_dir() / "base_sessions"
        self.base_path = base_dir / f"{_base_cache_key(cfg, seed, self.entry.base_training)}.pt"

    def _strategy(self, model: FSCILNet, metric: FSCILMetric, loggers: list) -> tuple[FSCILStrategy, _BaseCapture]:
        from avalanche.training.plugins import EvaluationPlugin

        t = self.cfg.train
        opt = torch.optim.SGD(model.parameters(), lr=t.base_lr, momentum=t.momentum,
                              weight_decay=t.weight_decay, nesterov=t.momentum > 0)
        args = dict(self.cfg.strategy_args.get(self.name, {}))
        if "seed" in self.entry.hyperparameters():
            args.setdefault("seed", self.seed)
        capture = _BaseCapture()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified")
            evaluator = EvaluationPlugin(metric, loggers=loggers)
        strategy = create_strategy(
            self.name, model=model, optimizer=opt,
            schedule=SessionSchedule(t.base_epochs, t.base_lr, t.novel_epochs, t.novel_lr, t.cosine),
            strategy_args=args, plugins=[capture], train_mb_size=t.batch_size,
            eval_mb_size=t.eval_batch_size, device=self.cfg.device, evaluator=evaluator,
            channels_last=t.channels_last,
        )
        return strategy, capture

    def run(self) -> dict[str, Any]:
        from .wandb_logger import WandbRunLogger

        cfg, sc = self.cfg, self.scenario
        model = build_model(cfg, sc, self.seed)
        metric = FSCILMetric(stream_name="test")
        state = load_torch(self.ckpt_path, cfg.device) if self.ckpt_path.exists() else None
        wb = WandbRunLogger(
            mode=cfg.wandb.mode, project=cfg.wandb.project, group=cfg.suite,
            name=f"{cfg.stream.name}/{self.name}/seed{self.seed}", tags=cfg.wandb.tags,
            config={**config_to_dict(cfg), "strategy": self.name, "seed": self.seed},
            dir=self.out, run_id=state["wandb"]["run_id"] if state and state.get("wandb") else None,
            resume=state is not None, entity=cfg.wandb.entity,
        )
        strategy, capture = self._strategy(model, metric, [wb] if cfg.wandb.mode != "off" else [])
        plugins = _plugins_with_state(strategy)
        start, elapsed, session_times = 0, 0.0, []
        if state is not None:
            model.load_state_dict(state["model"])
            strategy.optimizer.load_state_dict(state["optimizer"])
            for key, p in plugins.items():
                p.load_state_dict(state["plugins"][key])
            metric.load_state_dict(state["metric"])
            for k, v in state["clock"].items():
                setattr(strategy.clock, k, v)
            start, elapsed, session_times = state["session"] + 1, state["elapsed"], state["session_times"]
            if strategy.cumulative:
                strategy.remember(sc.train_stream[:start])

        for s in range(start, sc.n_sessions):
            t0 = time.perf_counter()
            seed_everything(self.seed, s)
            schedule = strategy.schedule
            cached = s == 0 and self.base_path.exists()
            if cached:  # shared base session: load it, run the hooks with 0 epochs
                model.load_state_dict(load_torch(self.base_path, cfg.device))
                strategy.schedule = replace_schedule(schedule, base_epochs=0)
            strategy.train(sc.train_stream[s])
            strategy.schedule = schedule
            if s == 0 and not cached and capture.state is not None:
                save_torch(self.base_path, capture.state)
            strategy.eval(sc.test_stream[: s + 1])
            session_times.append(time.perf_counter() - t0)
            elapsed += session_times[-1]
            row = metric.table().sessions[-1]
            self.on_session(self.name, self.seed, s, {"acc": row.acc, "base_cached": cached})
            save_torch(self.ckpt_path, {
                "version": CHECKPOINT_VERSION, "session": s, "model": model.state_dict(),
                "optimizer": strategy.optimizer.state_dict(),
                "plugins": {k: p.state_dict() for k, p in plugins.items()},
                "metric": metric.state_dict(), "clock": _clock_state(strategy),
                "elapsed": elapsed, "session_times": session_times, "wandb": wb.state_dict(),
            })

        table = metric.table()
        result = {
            "strategy": self.name, "seed": self.seed, "table": table.to_dict(),
            "wall_time_s": elapsed, "session_times_s": session_times,
            "peak_memory": _peak_memory_mb(cfg.device),
        }
        if cfg.wandb.mode != "off":
            wb.log_summary({"AA": table.aa, "PD": table.pd, "last_acc": table.sessions[-1].acc})
            wb.log_results_table(
                ["session", "acc", "base", "novel", "hm"],
                [[r.session, r.acc, r.base, r.novel, r.hm] for r in table.sessions],
            )
        wb.finish()
        write_json(self.result_path, result)
        self.ckpt_path.unlink(missing_ok=True)
        return result


def replace_schedule(schedule: SessionSchedule, **changes: Any) -> SessionSchedule:
    """A copy of ``schedule`` with some fields changed."""
    kw = dict(base_epochs=schedule.base_epochs, base_lr=schedule.base_lr,
              novel_epochs=schedule.novel_epochs, novel_lr=schedule.novel_lr, cosine=schedule.cosine)
    kw.update(changes)
    return SessionSchedule(**kw)


def resume_config(output: str | os.PathLike) -> RunConfig:
    """The config of the run in ``output`` (its ``config.yaml``)."""
    path = Path(output) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"--resume {output}: no run there ({path} not found)")
    with open(path, encoding="utf-8") as f:
        return config_from_dict(yaml.safe_load(f))


def check_names(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` for an unknown stream, strategy, hyper-parameter or backbone."""
    from ..models import list_backbones
    from ..strategies import STRATEGIES
    from ..streams import STREAMS

    if cfg.stream.name not in STREAMS:
        raise ConfigError(f"stream.name: unknown {cfg.stream.name!r}; allowed: {', '.join(sorted(STREAMS))}")
    for name in [*cfg.strategies, *cfg.strategy_args]:
        if name not in STRATEGIES:
            raise ConfigError(f"strategies: unknown {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    for name, args in cfg.strategy_args.items():
        allowed = STRATEGIES[name].hyperparameters()
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise ConfigError(
                f"strategy_args.{name}.{unknown[0]}: unknown hyper-parameter; allowed: {', '.join(allowed) or '(none)'}"
            )
    if cfg.model.backbone not in list_backbones():
        raise ConfigError(f"model.backbone: unknown {cfg.model.backbone!r}; allowed: {', '.join(list_backbones())}")


def run_benchmark(
    cfg: RunConfig,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) a suite and write its report; returns the ``results.json`` content.

    Args:
        cfg: the validated config; ``cfg.output`` is the output folder (``None``:
            ``runs/<suite>/<timestamp>``, set on ``cfg``).
        resume: continue the run already in ``cfg.output`` (finished (strategy, seed)
            pairs are kept, unfinished ones restart from their last finished session).
        command: the command line, recorded in the report.
        progress: show a progress bar (stderr).
        log: where to print the final table.
    """
    from tqdm.auto import tqdm

    check_names(cfg)
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
    write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    start = time.perf_counter()
    environment = _env_info(cfg.device)  # at the start: the commit that ran, not a later one
    scenarios = {
        seed: get_stream(cfg.stream.name, data_root=cfg.data_root, seed=seed, **cfg.stream.args)
        for seed in cfg.seeds
    }
    n_sessions = next(iter(scenarios.values())).n_sessions
    bar = tqdm(total=len(cfg.seeds) * len(cfg.strategies) * n_sessions, disable=not progress,
               desc=cfg.suite, unit="session", file=sys.stderr, dynamic_ncols=True)

    def on_session(strategy: str, seed: int, s: int, info: dict) -> None:
        bar.set_postfix_str(f"{strategy} seed{seed} S{s} acc={100 * info['acc']:.1f}%")
        bar.update(1)

    runs = []
    for seed, scenario in scenarios.items():
        for name in cfg.strategies:
            run = _Run(cfg, out, scenario, name, seed, on_session)
            if run.result_path.exists():
                with open(run.result_path, encoding="utf-8") as f:
                    runs.append(json.load(f))
                bar.update(n_sessions)
                continue
            if run.ckpt_path.exists():
                bar.update(load_torch(run.ckpt_path)["session"] + 1)
            runs.append(run.run())
    bar.close()

    results = _results(cfg, command, environment, next(iter(scenarios.values())).describe(), runs,
                       wall_time=time.perf_counter() - start)
    md = write_report(out, results)
    if cfg.wandb.mode != "off":
        _log_suite_to_wandb(cfg, out, results)
    log(md)
    return results


def _results(cfg: RunConfig, command: str | None, environment: dict, scenario: str,
             runs: list[dict], wall_time: float, missing: list[str] | None = None) -> dict[str, Any]:
    return {
        "suite": cfg.suite,
        "command": command,
        "config": config_to_dict(cfg),
        "environment": environment,
        "scenario": scenario,
        "wall_time_s": wall_time,
        "wall_time_s_all_sessions": sum(r["wall_time_s"] for r in runs),
        "incomplete": missing or [],
        "runs": runs,
        "summary": aggregate(runs, cfg.strategies),
    }


def report_benchmark(output: str | os.PathLike, *, command: str | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the report of the finished (strategy, seed) runs in ``output``.

    For a run that is still going or was stopped: the report covers what finished and
    lists the missing pairs under ``incomplete``; ``--resume`` completes it later.
    """
    cfg = resume_config(output)
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
        raise BenchmarkError(f"{out}: no finished (strategy, seed) run to report")
    scenario = get_stream(cfg.stream.name, data_root=cfg.data_root, seed=cfg.seeds[0], **cfg.stream.args)
    results = _results(cfg, command, _env_info(cfg.device), scenario.describe(), runs,
                       wall_time=sum(r["wall_time_s"] for r in runs), missing=missing)
    log(write_report(out, results))
    return results


def _log_suite_to_wandb(cfg: RunConfig, out: Path, results: dict[str, Any]) -> None:
    from .wandb_logger import WandbRunLogger

    wb = WandbRunLogger(mode=cfg.wandb.mode, project=cfg.wandb.project, group=cfg.suite,
                        name=f"{cfg.stream.name}/summary", config=results["config"], dir=out,
                        tags=cfg.wandb.tags, entity=cfg.wandb.entity)
    columns = results["summary"]["columns"]
    wb.log_results_table(columns, results["summary"]["rows"])
    wb.log_image("sessions", out / "sessions.png")
    wb.finish()
