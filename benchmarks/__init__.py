"""The benchmark runner behind the ``avalanche-fscl`` command.

``run_benchmark(config)`` runs strategies x seeds over one stream preset, checkpointing
after every session, and writes ``results.json``, ``results.md`` and ``sessions.png``.
Configs are YAML validated into :class:`RunConfig`; shipped ones live in ``configs/``.
"""

from .config import ConfigError, RunConfig, config_from_dict, list_configs, load_config
from .runner import BenchmarkError, resume_config, run_benchmark

__all__ = [
    "RunConfig",
    "ConfigError",
    "BenchmarkError",
    "config_from_dict",
    "load_config",
    "list_configs",
    "run_benchmark",
    "resume_config",
]
