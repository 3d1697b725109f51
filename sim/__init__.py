"""Serrano host software: assembler, golden model, backends and the ``Accelerator`` runtime.

>>> from serrano.sim import Accelerator
>>> acc = Accelerator(backend="golden")
"""

from .runtime import Accelerator, Stats

__all__ = ["Accelerator", "Stats"]
