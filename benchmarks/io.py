"""Atomic file writes: a killed run never leaves a half-written result or checkpoint."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..streams.data import atomic_path

__all__ = ["atomic_path", "write_text", "write_json", "save_torch", "load_torch"]


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint written by :func:`save_torch` (tensors and plain data only)."""
    return torch.load(path, map_location=map_location, weights_only=True)
