"""avalanche_fscl.plugins"""

__all__: list[str] = []
