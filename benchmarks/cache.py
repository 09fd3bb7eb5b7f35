"""The shared base-session cache, keyed on everything that produced the weights.

Strategies with equal :meth:`~avalanche_fscl.strategies.StrategySpec.base_session_key` train
session 0 identically, so the runner trains it once per (stream, seed) and the others load
it. The key holds the stream and its arguments, the data folder, the seed, the device type,
the strategy's own key (model, base schedule, optimizer settings, custom pieces), the
versions of torch, torchvision, avalanche-lib and numpy, and a hash of the **source code**
that produced the weights: this package's ``models`` and ``streams`` modules, the training
template and, for a strategy that trains session 0 itself (a custom model, optimizer or
``fit_base_session``), the strategy's own module(s). Editing a backbone, a transform or the
template gives a new key: a stale model is never reused. Plugins must not change session-0
training unless their strategy's ``base_session_key`` says so (the baselines' and FSCL's do
not: FSCL meta-learns after the shared weights are captured).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

from .io import load_torch, save_torch

__all__ = ["BaseSessionCache", "code_fingerprint", "package_versions", "CacheError", "MODES"]

FORMAT = "avalanche-fscl/base-session"
VERSION = 2
MODES = ("on", "off", "refresh")
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the avalanche_fscl package folder


class CacheError(RuntimeError):
    """A cache file exists under the key's name but does not hold that key's weights."""


def package_versions() -> dict[str, str]:
    """Versions of the libraries whose numerics the weights depend on."""
    out = {"torch": torch.__version__}
    for dist in ("torchvision", "avalanche-lib", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _sources(objects: Iterable[Any]) -> list[Path]:
    files = {p for folder in ("models", "streams") for p in (_PACKAGE_ROOT / folder).glob("*.py")}
    files |= {_PACKAGE_ROOT / "strategies" / "template.py", _PACKAGE_ROOT / "strategies" / "spec.py"}
    for obj in objects:
        for cls in inspect.getmro(obj if isinstance(obj, type) else type(obj)):
            if cls is object:
                continue
            try:
                src = inspect.getsourcefile(cls)
            except TypeError:  # builtins
                continue
            if src:
                files.add(Path(src).resolve())
    return sorted(files)


def code_fingerprint(*objects: Any) -> str:
    """sha256 (16 hex digits) of this package's model, stream and template sources plus the
    source files of ``objects``' classes (and their bases)."""
    h = hashlib.sha256()
    for path in _sources(objects):
        rel = path.relative_to(_PACKAGE_ROOT) if path.is_relative_to(_PACKAGE_ROOT) else path
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class BaseSessionCache:
    """One cached base session: ``<folder>/<stream>-seed<k>-<digest>.pt``.

    Args:
        folder: where the files live.
        key: everything that determines the weights (JSON-able); its sha256 names the file
            and the file stores it, so a load checks it.
        mode: ``"on"`` (load if present, else train and store), ``"off"`` (neither) or
            ``"refresh"`` (train and overwrite).
        label: readable file-name prefix, e.g. ``"omniglot_fscil-seed0"``.
    """

    def __init__(self, folder: str | Path, key: dict[str, Any], mode: str = "on", label: str = "base"):
        if mode not in MODES:
            raise ValueError(f"base_cache: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self.mode = mode
        self.digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / f"{label}-{self.digest}.pt"
        self.trained_on: str | None = None  # the machine that trained the weights (``machine_name``)

    def load(self) -> dict[str, torch.Tensor] | None:
        """The cached ``state_dict`` (CPU), or ``None`` (mode off/refresh, or not cached yet)."""
        if self.mode != "on" or not self.path.exists():
            return None
        blob = load_torch(self.path)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("version") != VERSION:
            raise CacheError(
                f"{self.path}: not a version-{VERSION} base-session cache file; delete it or run "
                f"with --base-cache refresh"
            )
        if blob.get("key") != self.key:
            raise CacheError(
                f"{self.path}: holds the weights of another configuration (its stored key differs); "
                f"delete it or run with --base-cache refresh"
            )
        self.trained_on = blob.get("machine")  # absent in files written before it was recorded
        return blob["state"]

    def save(self, state: dict[str, torch.Tensor], machine: str | None = None) -> None:
        """Store ``state`` (mode on/refresh; atomic) with the ``machine`` that trained it (the same
        key trains to other bits on another CPU type). An unwritable folder only warns."""
        self.trained_on = machine
        if self.mode == "off":
            return
        try:
            save_torch(self.path, {"format": FORMAT, "version": VERSION, "key": self.key, "state": state,
                                   "machine": machine})
        except OSError as e:
            warnings.warn(f"base-session cache not written ({self.path}: {e.strerror})", RuntimeWarning, stacklevel=2)

    def describe(self, source: str) -> dict[str, Any]:
        """What ``results.json`` records: where session 0's weights came from."""
        return {"source": source, "cache": self.mode, "file": str(self.path), "key": self.digest,
                "trained_on": self.trained_on}
