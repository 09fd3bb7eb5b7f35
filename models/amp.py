"""Mixed precision by name: one vocabulary (``None``, ``"bf16"``, ``"fp16"``) for every module
that offers ``torch.autocast``.

Whether it helps depends on the machine: on CPUs with AMX or AVX-512 BF16, bf16 autocast
halves a convolutional or CLIP training step; on CPUs without them it is slower than fp32.
Measure on the machine at hand (``benchmarks/README.md`` records where it was measured).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

__all__ = ["AUTOCAST_DTYPES", "autocast_context", "check_autocast", "fastest_autocast"]

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


def fastest_autocast(step: Callable[[str | None], Any], candidates: Sequence[str | None] = (None, "bf16"),
                     repeats: int = 3, device: torch.device | str = "cpu") -> tuple[str | None, dict[str, float]]:
    """The candidate under which ``step(autocast)`` runs fastest on this machine.

    Each candidate runs ``repeats`` times, the first as a warm-up (>= 2); its time is the
    minimum of the rest (seconds, the device synchronised on CUDA). ``step`` may change
    state (weights, optimizer): the caller saves and restores it around this call.

    Returns:
        ``(choice, {"fp32" | "bf16" | "fp16": seconds})``.
    """
    if repeats < 2:
        raise ValueError(f"fastest_autocast: repeats={repeats!r} must be >= 2 (the first run is a warm-up)")
    for c in candidates:
        check_autocast(c, "candidates")
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times: dict[str, float] = {}
    for c in candidates:
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(c)
            sync()
            t.append(time.perf_counter() - t0)
        times[c or "fp32"] = min(t[1:])
    best = min(times, key=times.get)
    return (None if best == "fp32" else best), times
