"""avalanche_fscl.models"""

__all__: list[str] = []
