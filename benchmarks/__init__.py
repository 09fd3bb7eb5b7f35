"""The benchmark runner behind the ``avalanche-fscl`` command.

``run_benchmark(config)`` runs strategies x seeds over one stream preset, checkpointing
after every session, and writes ``results.json``, ``results.md`` and ``sessions.png``.
Configs are YAML validated into :class:`RunConfig`; shipped ones live in ``configs/``.
"""

from .config import ConfigError, RunConfig, config_from_dict, list_configs, load_config

_RUNNER = ("run_benchmark", "report_benchmark", "resume_config", "BenchmarkError")


def __getattr__(name: str):
    # The runner imports torch and Avalanche: loaded on first use, so the CLI can set up
    # warning filters and answer `--help` / `list` arguments before those imports.
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RunConfig",
    "ConfigError",
    "BenchmarkError",
    "config_from_dict",
    "load_config",
    "list_configs",
    "run_benchmark",
    "report_benchmark",
    "resume_config",
]
