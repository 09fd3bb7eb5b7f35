"""Stream presets by name: the runner and ``avalanche-fscl list`` read this registry."""

from __future__ import annotations

from typing import Callable

from .fscil import FSCILScenario

__all__ = ["register_stream", "get_stream", "list_streams", "STREAMS"]

StreamFactory = Callable[..., FSCILScenario]
STREAMS: dict[str, StreamFactory] = {}


def register_stream(name: str) -> Callable[[StreamFactory], StreamFactory]:
    """Decorator: register a preset factory under ``name`` (unique)."""

    def deco(fn: StreamFactory) -> StreamFactory:
        if name in STREAMS:
            raise ValueError(f"stream {name!r} is already registered")
        STREAMS[name] = fn
        return fn

    return deco


def get_stream(name: str, **kwargs) -> FSCILScenario:
    """Build the preset ``name`` with keyword arguments (e.g. ``data_root=``, ``seed=``)."""
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}; allowed: {', '.join(sorted(STREAMS))}")
    return STREAMS[name](**kwargs)


def list_streams() -> dict[str, str]:
    """``{name: first line of the preset's docstring}``."""
    return {n: (f.__doc__ or "").strip().splitlines()[0] for n, f in sorted(STREAMS.items())}
