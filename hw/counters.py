"""Performance counters: one counter per field of ``isa.Counters``, fed by one-bit events."""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa

__all__ = ["CounterEvents", "PerfCounters"]


def CounterEvents() -> data.StructLayout:
    """One event bit per counter of ``isa.Counters``, by the same names."""
    return data.StructLayout({name: unsigned(1) for name, _ in data.Layout.cast(isa.Counters)})


class PerfCounters(wiring.Component):
    """Counts ``events`` while ``counting``: one counter per field of ``isa.Counters``.

    Each event is registered and gated by a registered ``counting`` on its way into the
    count: the same sum as gating before the register (both operands are a cycle late), but
    the gate's inputs stay off the events' paths and one register takes ``counting``'s
    fan-out. Events named in ``late`` come from far away and are registered once more: the
    gate then sees them a cycle late, which counts the same provided those events are low in
    the cycle before ``counting`` rises and in the one before it falls. Counters wrap.

    Parameters
    ----------
    width : int
        Bits of each counter (at most the ``isa.Counters`` field width; zero-extended).
    late : tuple of str
        Counter names whose events arrive a long route away.

    Attributes
    ----------
    events : In(CounterEvents)
    counting : In(1)
    counters : Out(isa.Counters)
        The counts, one cycle behind the events (two for ``late`` ones).
    """

    def __init__(self, *, width: int = isa.COUNTER_WIDTH, late: tuple[str, ...] = ()):
        if not isinstance(width, int) or not 1 <= width <= isa.COUNTER_WIDTH:
            raise ValueError(f"width must be an integer from 1 to {isa.COUNTER_WIDTH}, "
                             f"not {width!r}")
        self._width = width
        names = {name for name, _ in data.Layout.cast(isa.Counters)}
        unknown = sorted(set(late) - names)
        if unknown:
            raise ValueError(f"late names no counter of isa.Counters: {', '.join(unknown)}")
        self._late = tuple(late)
        super().__init__({
            "events": In(CounterEvents()),
            "counting": In(1),
            "counters": Out(isa.Counters),
        })

    def elaborate(self, platform):
        m = Module()
        counting_q = Signal()
        m.d.sync += counting_q.eq(self.counting)
        for name, _ in data.Layout.cast(isa.Counters):
            term = self.events[name]
            if name in self._late:
                term_q = Signal(name=f"{name}_q")
                m.d.sync += term_q.eq(term)
                term = term_q
            inc = Signal(name=f"inc_{name}")
            count = Signal(self._width, name=f"count_{name}")
            m.d.sync += [inc.eq(term), count.eq(count + (inc & counting_q))]
            m.d.comb += self.counters[name].eq(count)
        return m
