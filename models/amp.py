"""Mixed precision by name: one vocabulary (``None``, ``"bf16"``, ``"fp16"``) for every module
that offers ``torch.autocast``.

Whether it helps depends on the machine: on CPUs with AMX or AVX-512 BF16, bf16 autocast
halves a convolutional or CLIP training step; on CPUs without them it is slower than fp32.
Measure on the machine at hand (``benchmarks/README.md`` records where it was measured).
"""

from __future__ import annotations

import torch

__all__ = ["AUTOCAST_DTYPES", "autocast_context", "check_autocast"]

AUTOCAST_DTYPES: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_autocast(value: str | None, name: str = "autocast", allowed: tuple = tuple(AUTOCAST_DTYPES)) -> str | None:
    """``value`` if it is one of ``allowed``; else ``ValueError`` naming ``name`` and the allowed values."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(repr(a) for a in allowed)}")
    return value


def autocast_context(device: torch.device | str, autocast: str | None) -> torch.autocast:
    """``torch.autocast`` on ``device``'s type in ``autocast``'s dtype; disabled (a no-op) for ``None``."""
    dtype = AUTOCAST_DTYPES[check_autocast(autocast)]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
