"""What machine a result came from, for the provenance written next to every recorded number."""

from __future__ import annotations

import platform
import re
from pathlib import Path

__all__ = ["cpu_model", "device_problem"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``), else ``platform.processor()``.

    Recorded because CPU kernels differ between CPU types: the same config and seed give the same
    bits on one CPU type, not across two (an Intel Xeon and an AMD EPYC moved a RAML seed by 1.1
    points), so a result is only paired with results from the same model name.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_problem(device: str, check_available: bool = True) -> str | None:
    """Why ``device`` cannot run here, as one line naming the value (``None``: it can).

    Allowed: ``cpu``, ``cuda``, ``cuda:N`` (a GPU torch sees) and ``mps``. Every command that
    takes ``--device`` (and the runner's ``device:`` key) asks this before building anything.
    ``check_available=False`` checks the spelling only (no torch import).
    """
    if not (device in ("cpu", "mps") or re.fullmatch(r"cuda(:\d+)?", device)):
        return f"{device!r} is not allowed; allowed: cpu, cuda, cuda:N, mps"
    if device == "cpu" or not check_available:
        return None
    import torch

    if device == "mps":
        if not torch.backends.mps.is_available():
            return "'mps' requested but torch sees no MPS device on this machine; use --device cpu"
        return None
    if not torch.cuda.is_available():
        return f"{device!r} requested but torch sees no CUDA GPU on this machine; use --device cpu"
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        return f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None
