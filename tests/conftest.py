"""Shared fixtures: the offline data folder (skips with a reason when absent) and a private cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """``$AVALANCHE_FSCL_DATA`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("AVALANCHE_FSCL_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"offline data folder not found: {root} (set AVALANCHE_FSCL_DATA)")
    return root


def require_dataset(root: Path, name: str) -> Path:
    """``root/name`` or skip the test with the path that was looked at."""
    folder = root / name
    if not folder.is_dir():
        pytest.skip(f"dataset folder not found: {folder}")
    return folder


@pytest.fixture(autouse=True, scope="session")
def _wandb_off():
    # No test may reach the network or a W&B account.
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    yield


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
