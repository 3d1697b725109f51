"""Address ranges that in-flight instructions touch: the decoder's scoreboard compares them."""

from amaranth import unsigned
from amaranth.lib import data

__all__ = ["RangeLayout", "overlaps", "overlap_terms"]


class RangeLayout(data.StructLayout):
    """A half-open address range ``[lo, hi)`` with a valid bit."""

    def __init__(self, width: int):
        super().__init__({"valid": unsigned(1), "lo": unsigned(width), "hi": unsigned(width)})


def overlap_terms(a, b):
    """The three terms whose AND is :func:`overlaps`: both valid, ``a.lo < b.hi``,
    ``b.lo < a.hi`` (so that a pipeline can register them apart)."""
    return a.valid & b.valid, a.lo < b.hi, b.lo < a.hi


def overlaps(a, b):
    """1 when two valid ranges share an address."""
    both, ab, ba = overlap_terms(a, b)
    return both & ab & ba
