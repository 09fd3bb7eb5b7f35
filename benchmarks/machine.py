"""What machine a result came from, for the provenance written next to every recorded number."""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path
from typing import Callable, TypeVar

__all__ = ["cpu_model", "device_problem", "machine_name", "restores_torch_threads"]

_F = TypeVar("_F", bound=Callable)


def restores_torch_threads(fn: _F) -> _F:
    """Decorate an entry point that sets ``torch.set_num_threads`` from its config (a suite, a
    pretraining, a meta-training) so the caller's thread count is back when it returns or raises:
    a library call must not leave the whole process on one thread."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        n = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)

    return wrapper  # type: ignore[return-value]


# CPU features that pick different kernels (and so different float rounding and speed) in torch/oneDNN
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` (empty where unreadable)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def cpu_model() -> str:
    """The CPU's type: ``/proc/cpuinfo``'s ``model name``, its family, model and stepping, and the
    vector instructions torch's CPU kernels choose from, e.g. ``"AMD EPYC (family 25 model 1
    stepping 1; avx2)"``; else ``platform.processor()``.

    Recorded because CPU kernels differ between CPU types: the same config and seed give the same
    bits on one CPU type, not across two (an Intel Xeon and an AMD EPYC moved a RAML seed by 1.1
    points), so a result is only paired with results from the same string. The name alone is not
    enough: virtual machines report ``"AMD EPYC"`` for a Zen 3 part without AVX-512 and a Zen 4 part
    with AVX-512 BF16, whose numbers and timings differ.
    """
    info = _cpuinfo()
    name = info.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    ident = " ".join(f"{k} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info).replace("cpu family", "family")
    flags = set(info.get("flags", "").split())
    isa = ", ".join(f for f in _ISA_FLAGS if f in flags) or "no avx2"
    return f"{name} ({ident}; {isa})" if ident else f"{name} ({isa})"


def machine_name(device: str = "cpu") -> str:
    """What computes on ``device``: :func:`cpu_model` for ``cpu``, the GPU's name for ``cuda[:N]``
    (e.g. ``"NVIDIA H200"``), ``"mps"``. Results pair, and speed choices hold, only within one name."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model() if dev.type == "cpu" else dev.type


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
