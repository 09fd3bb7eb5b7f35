"""avalanche-fscl: continual few-shot learning for Avalanche.

Sub-packages: :mod:`avalanche_fscl.streams` (FSCIL scenarios and presets),
:mod:`avalanche_fscl.plugins` (Avalanche plugins and FSCIL metrics),
:mod:`avalanche_fscl.strategies` (ready-made strategies), :mod:`avalanche_fscl.models`
(backbones) and :mod:`avalanche_fscl.benchmarks` (the benchmark runner).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
