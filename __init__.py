"""avalanche-fscl: continual few-shot learning for Avalanche.

Sub-packages: :mod:`avalanche_fscl.streams` (FSCIL scenarios and presets),
:mod:`avalanche_fscl.plugins` (Avalanche plugins and FSCIL metrics),
:mod:`avalanche_fscl.strategies` (ready-made strategies), :mod:`avalanche_fscl.models`
(backbones) and :mod:`avalanche_fscl.benchmarks` (the benchmark runner).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__version__ = "0.1.0"
__all__ = ["__version__"]


def _register(registry: dict[str, Any], kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator adding an object to ``registry`` under ``name`` (each name once)."""

    def deco(obj: Any) -> Any:
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered")
        registry[name] = obj
        return obj

    return deco


def _lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose names load on first use (PEP 562).

    ``exports`` maps a public name to the sub-module (``".fscil"``) that defines it. The
    command line checks configs with the light modules (no Avalanche import, ~1 s) and
    imports the rest only when it runs something.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
