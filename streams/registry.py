"""Stream presets by name: the runner and ``avalanche-fscl list`` read this registry.

Importing this module (and the preset modules) does not import Avalanche: a preset imports
it when it builds its scenario, so the command line can check a config's stream and its
arguments (:func:`check_stream_args`) in about a second.
"""

from __future__ import annotations

import importlib
import inspect
import os
import types
import typing
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import _register

if TYPE_CHECKING:
    from .fscil import FSCILScenario

__all__ = ["register_stream", "get_stream", "list_streams", "check_stream_args", "STREAMS"]

StreamFactory = Callable[..., "FSCILScenario"]
STREAMS: dict[str, StreamFactory] = {}

# Modules whose presets register themselves on import.
_PRESET_MODULES = (".presets", ".external")
# Set by the caller of a preset (the runner: `seeds`, `data_root`), never by `stream.args`.
RESERVED_ARGS = ("data_root", "seed")
# Smallest allowed value of the protocol arguments the presets share.
_MINIMUM = {"base_classes": 1, "ways": 1, "shots": 1, "base_shots": 1, "sessions": 0, "image_size": 1,
            "heldout_classes": 0, "heldout_per_class": 0}


def register_stream(name: str) -> Callable[[StreamFactory], StreamFactory]:
    """Decorator: register a preset factory under ``name`` (unique)."""
    return _register(STREAMS, "stream", name)


def _load_presets() -> None:
    for module in _PRESET_MODULES:
        importlib.import_module(module, __package__)


def _factory(name: str) -> StreamFactory:
    _load_presets()
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}; allowed: {', '.join(sorted(STREAMS))}")
    return STREAMS[name]


def get_stream(name: str, **kwargs: Any) -> "FSCILScenario":
    """Build the preset ``name`` with keyword arguments (e.g. ``data_root=``, ``seed=``)."""
    return _factory(name)(**kwargs)


def list_streams() -> dict[str, str]:
    """``{name: first line of the preset's docstring}``."""
    _load_presets()
    return {n: (f.__doc__ or "").strip().splitlines()[0] for n, f in sorted(STREAMS.items())}


def _accepts(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is os.PathLike:
        return isinstance(value, os.PathLike)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation we do not model: the preset checks it


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def check_stream_args(name: str, args: Mapping[str, Any], *, prefix: str = "stream.args") -> None:
    """Check ``args`` against the signature of preset ``name`` before anything is built.

    Raises:
        ValueError: unknown stream; an argument the preset does not take (or one the runner
            sets: ``data_root``, ``seed``); a value of the wrong type; a count below its
            minimum (``ways``, ``shots``, ``base_classes``, ``image_size`` >= 1,
            ``sessions`` >= 0). The message names ``<prefix>.<argument>`` and what is
            allowed. Limits that depend on the data (e.g. more ways than classes) are
            checked by the preset when it is built.
    """
    fn = _factory(name)
    params = {
        n: p for n, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in RESERVED_ARGS
    }
    for key, value in args.items():
        if key in RESERVED_ARGS:
            raise ValueError(
                f"{prefix}.{key}: set by the runner, not a stream argument "
                f"(use {'seeds' if key == 'seed' else 'data_root'}: in the config)"
            )
        if key not in params:
            raise ValueError(
                f"{prefix}.{key}: {name} takes no argument {key!r}; allowed: {', '.join(params)}"
            )
        annotation = params[key].annotation
        if isinstance(annotation, str):
            annotation = eval(annotation, fn.__globals__)  # noqa: S307 (the preset's own annotation)
        if annotation is not inspect.Parameter.empty and not _accepts(value, annotation):
            raise ValueError(
                f"{prefix}.{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})"
            )
        low = _MINIMUM.get(key)
        if low is not None and value is not None and value < low:
            raise ValueError(f"{prefix}.{key}: must be >= {low}, got {value!r}")
