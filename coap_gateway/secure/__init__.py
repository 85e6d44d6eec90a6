"""The secure layer (sans-I/O): Noise sessions and frames, keys and pins."""

from . import keys

__all__ = ["keys"]
