"""Address ranges that in-flight instructions touch: the decoder's scoreboard compares them."""

from amaranth import unsigned
from amaranth.lib import data

__all__ = ["RangeLayout", "overlaps"]


class RangeLayout(data.StructLayout):
    """A half-open address range ``[lo, hi)`` with a valid bit."""

    def __init__(self, width: int):
        super().__init__({"valid": unsigned(1), "lo": unsigned(width), "hi": unsigned(width)})


def overlaps(a, b):
    """1 when two valid ranges share an address."""
    return a.valid & b.valid & (a.lo < b.hi) & (b.lo < a.hi)
