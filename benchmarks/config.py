"""Benchmark configuration: plain YAML validated into typed dataclasses.

An unknown key or a value of the wrong type is a :class:`ConfigError` that names the key
(with its path, e.g. ``train.base_epochs``) and the allowed keys or type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .machine import device_problem

__all__ = [
    "ConfigError",
    "StreamConfig",
    "ModelConfig",
    "TrainConfig",
    "WandbConfig",
    "RunConfig",
    "load_config",
    "check_light",
    "read_yaml",
    "config_from_dict",
    "config_to_dict",
    "CONFIG_DIR",
    "CLIP_CHECKPOINT_HELP",
    "list_configs",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: what a ``--clip-checkpoint`` option accepts (``load_clip``'s ``pretrained``), for every command that has one
CLIP_CHECKPOINT_HELP = ("'fscl' (the kept checkpoint), 'fscl:<variant>' (another kept one; `avalanche-fscl list` "
                        "names them), a file, an open_clip tag, or 'none' (random weights)")


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has a value of the wrong type."""


@dataclass
class StreamConfig:
    """Which stream preset, and the arguments passed to it (e.g. ``sessions``, ``image_size``)."""

    name: str = "digits_fscil"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The network: a registered backbone plus a classifier head over all classes."""

    backbone: str = "conv4"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    head: Literal["linear", "cosine"] = "cosine"
    scale: float = 16.0


TRAIN_AUTOCAST = (None, "bf16", "fp16", "auto")  # train.autocast's values


@dataclass
class TrainConfig:
    """Optimisation settings shared by every strategy (SGD with momentum, cosine decay per session)."""

    batch_size: int = 64
    eval_batch_size: int = 512
    base_epochs: int = 10
    base_lr: float = 0.1
    novel_epochs: int = 10
    novel_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    cosine: bool = True
    channels_last: bool = False  # conv layout: ~1.8x faster on CPU for Conv4
    materialize_mb: float = 1024  # a deterministic session as one tensor on the device (0: never); same results
    # mixed precision of the strategies' forward passes: null (fp32), bf16, fp16, or auto (time fp32
    # against bf16 (and fp16 on CUDA) on one training batch of the configured model, keep the fastest;
    # the choice is written to the run's config.yaml, the timings to run.json)
    autocast: str | None = None


@dataclass
class WandbConfig:
    """Weights & Biases tracking: ``off`` imports nothing from wandb; ``offline`` needs no network."""

    mode: Literal["off", "offline", "online"] = "off"
    project: str = "avalanche-fscl"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """One benchmark suite: a stream, strategies compared side by side, seeds."""

    suite: str = "digits_fscil"
    stream: StreamConfig = field(default_factory=StreamConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategies: list[str] = field(
        default_factory=lambda: ["finetune", "ewc", "lwf", "replay", "ncm", "prototype", "joint"]
    )
    strategy_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    # extra evaluation columns for every strategy: {registered column: {its arguments}}
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    num_threads: int | None = None
    data_root: str | None = None
    output: str | None = None  # None: runs/<suite>/<timestamp>
    # shared base sessions: "on" (load or train and store), "off" (neither), "refresh" (train and overwrite)
    base_cache: Literal["on", "off", "refresh"] = "on"
    base_cache_dir: str | None = None  # None: $AVALANCHE_FSCL_CACHE/base_sessions
    wandb: WandbConfig = field(default_factory=WandbConfig)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, path)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        return {_convert(k, kt, path): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is int or tp is str or tp is bool:
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise bad
        return value
    raise ConfigError(f"{path}: unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; allowed keys{' in ' + prefix if prefix else ''}: "
            f"{', '.join(names)}"
        )
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate a plain dict (parsed YAML) into a :class:`RunConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
    cfg = _build(RunConfig, data)
    _check_values(cfg)
    return cfg


def _check_values(cfg: RunConfig) -> None:
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.eval_batch_size": cfg.train.eval_batch_size,
    }
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    for key in ("base_epochs", "novel_epochs", "base_lr", "novel_lr", "momentum", "weight_decay", "materialize_mb"):
        if getattr(cfg.train, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(cfg.train, key)}")
    if cfg.train.autocast not in TRAIN_AUTOCAST:
        raise ConfigError(f"train.autocast: {cfg.train.autocast!r}; allowed: {', '.join(repr(a) for a in TRAIN_AUTOCAST)}")
    if not cfg.seeds:
        raise ConfigError("seeds: at least one seed is required")
    bad = [s for s in cfg.seeds if s < 0]
    if bad:
        raise ConfigError(f"seeds: must be integers >= 0, got {bad[0]}")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: duplicates in {cfg.seeds}")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ConfigError(f"num_threads: must be >= 1 or null, got {cfg.num_threads}")
    if not cfg.strategies:
        raise ConfigError("strategies: at least one strategy is required")
    if len(set(cfg.strategies)) != len(cfg.strategies):
        raise ConfigError(f"strategies: duplicates in {cfg.strategies}")
    why = device_problem(cfg.device, check_available=False)
    if why:
        raise ConfigError(f"device: {why}")


def check_light(cfg: RunConfig) -> None:
    """Checks that need the stream and backbone registries but not Avalanche (about 1 s).

    Raises :class:`ConfigError` for an unknown stream, a ``stream.args`` key the preset does
    not take (or of the wrong type, or below its minimum), an unknown backbone, or a CUDA
    device on a machine without one.
    """
    from ..models.backbones import list_backbones
    from ..streams.registry import check_stream_args, list_streams

    streams = list_streams()
    if cfg.stream.name not in streams:
        raise ConfigError(f"stream.name: unknown {cfg.stream.name!r}; allowed: {', '.join(streams)}")
    try:
        check_stream_args(cfg.stream.name, cfg.stream.args)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.model.backbone not in list_backbones():
        raise ConfigError(f"model.backbone: unknown {cfg.model.backbone!r}; allowed: {', '.join(list_backbones())}")
    why = device_problem(cfg.device)
    if why:
        raise ConfigError(f"device: {why}")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data (YAML/JSON-able)."""
    return dataclasses.asdict(cfg)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config. A bare name (``omniglot_fscil``) means a shipped config."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.exists():
        raise FileNotFoundError(
            f"--config {path}: no such file (shipped configs: {', '.join(list_configs())})"
        )
    data = read_yaml(p, what="--config")
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a YAML config file; invalid YAML is a :class:`ConfigError` naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {path}: invalid YAML at{where}: {problem}") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def list_configs() -> dict[str, str]:
    """Shipped configs: ``{name: first comment line}``."""
    out = {}
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        first = p.read_text(encoding="utf-8").splitlines()[:1]
        out[p.stem] = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
    return out
