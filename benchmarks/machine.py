"""What machine a result came from, for the provenance written next to every recorded number."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_model"]


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
