"""avalanche_fscl.strategies"""

__all__: list[str] = []
