"""avalanche_fscl.benchmarks"""

__all__: list[str] = []
