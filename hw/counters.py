"""Performance counters: one counter per field of ``isa.Counters``, fed by one-bit events."""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa

__all__ = ["CounterEvents", "counters_layout", "check_counter_width", "add_counter",
           "PerfCounters"]


def counters_layout(fields: tuple[str, ...]) -> data.StructLayout:
    """The fields ``fields`` of ``isa.Counters``, in that order, at their own widths."""
    return isa.layout_subset(isa.Counters, *fields)


def CounterEvents(fields: tuple[str, ...] = isa.PERF_COUNTERS) -> data.StructLayout:
    """One event bit per counter named in ``fields`` (fields of ``isa.Counters``), by the
    same names."""
    counters_layout(fields)  # validates the names
    return data.StructLayout({name: unsigned(1) for name in fields})


def check_counter_width(width: object) -> int:
    """``width`` if it is a valid counter width (1 .. ``isa.COUNTER_WIDTH``), else
    ``ValueError``."""
    if isinstance(width, bool) or not isinstance(width, int) or \
            not 1 <= width <= isa.COUNTER_WIDTH:
        raise ValueError(f"width must be an integer from 1 to {isa.COUNTER_WIDTH}, "
                         f"not {width!r}")
    return width


def add_counter(m: Module, name: str, term: Value, counting_q: Value, width: int, *,
                late: bool = False) -> Signal:
    """A wrapping counter of ``width`` bits that adds ``term`` (registered; ``late``: twice)
    in the cycles where ``counting_q`` (a register of ``counting``) is high; returns it.

    The one definition of how a counter of ``isa.Counters`` counts, shared by
    :class:`PerfCounters` and ``hw.activity.ActivityCounters``. ``term`` may be wider than
    one bit (several actions in one cycle)."""
    if late:
        term_q = Signal(len(term), name=f"{name}_q")
        m.d.sync += term_q.eq(term)
        term = term_q
    inc = Signal(len(term), name=f"inc_{name}")
    count = Signal(width, name=f"count_{name}")
    gated = inc & counting_q.replicate(len(inc)) if len(inc) > 1 else inc & counting_q
    m.d.sync += [inc.eq(term), count.eq(count + gated)]
    return count


class PerfCounters(wiring.Component):
    """Counts ``events`` while ``counting``: one counter per field named in ``fields``.

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
    fields : tuple of str
        The fields of ``isa.Counters`` counted (default ``isa.PERF_COUNTERS``, the
        decoder's; the activity counters are ``hw.activity``'s).

    Attributes
    ----------
    events : In(CounterEvents(fields))
    counting : In(1)
    counters : Out(counters_layout(fields))
        The counts, one cycle behind the events (two for ``late`` ones).
    """

    def __init__(self, *, width: int = isa.COUNTER_WIDTH, late: tuple[str, ...] = (),
                 fields: tuple[str, ...] = isa.PERF_COUNTERS):
        fields = tuple(fields)
        try:
            self._width = check_counter_width(width)
            layout = counters_layout(fields)  # ValueError for a name outside isa.Counters
            unknown = sorted(set(late) - set(fields))
            if unknown:
                raise ValueError(f"late names no counter of isa.Counters: "
                                 f"{', '.join(unknown)}")
        except ValueError:
            self._MustUse__silence = True   # a rejected component is not "never used"
            raise
        self._late = tuple(late)
        self._fields = fields
        super().__init__({
            "events": In(CounterEvents(fields)),
            "counting": In(1),
            "counters": Out(layout),
        })

    def elaborate(self, platform):
        m = Module()
        counting_q = Signal()
        m.d.sync += counting_q.eq(self.counting)
        for name in self._fields:
            count = add_counter(m, name, self.events[name], counting_q, self._width,
                                late=name in self._late)
            m.d.comb += self.counters[name].eq(count)
        return m
