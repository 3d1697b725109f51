"""Activity counters for an energy model: buffer entry reads and writes, memory beats.

An energy model multiplies each count by the energy of one such action and sums
(docs/performance.md, "Activity counters", defines what one count is). The counts depend on
the program only, never on timing or memory latency, so the golden model reproduces them
(``sim.golden``) and the tests compare them bit-exactly across backends.

The counter set of an accelerator is :func:`activity_events`: :data:`ACTIVITY_EVENTS`, a list
of (field of ``isa.Counters``, event source) pairs every accelerator has, and with the vector
unit :func:`vector_events`; the top level (``hw/top.py``) drives each source from a buffer
port's enable, a memory handshake or a unit's ``reads`` observation port
(``BufferReadsSignature``, ``VectorReadsSignature``). A new
unit adds its counter by appending a field to ``isa.Counters`` (and to
``isa.ACTIVITY_COUNTERS``), an :class:`Event` here, the source's tap in the top level and
its count in the golden model. Several sources may feed one field (their pulses add up), and
a source may be several bits wide (a count per cycle, e.g. elements processed).
"""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AcceleratorConfig
from .counters import add_counter, counters_layout

__all__ = ["Event", "ACTIVITY_EVENTS", "vector_events", "activity_events", "ActivityCounters",
           "driven_counter_bits"]


@dataclass(frozen=True, kw_only=True)
class Event:
    """One event source of an activity counter.

    Parameters
    ----------
    field : str
        The field of ``isa.Counters`` (one of ``isa.ACTIVITY_COUNTERS``) it adds to.
    source : str
        Name of the source in :attr:`ActivityCounters.events`.
    width : int
        Bits of the source: the count it adds in one cycle is its value (1: one action).
    """
    field: str
    source: str
    width: int = 1

    def __post_init__(self) -> None:
        if self.field not in isa.ACTIVITY_COUNTERS:
            raise ValueError(f"field must be one of isa.ACTIVITY_COUNTERS, not {self.field!r}")
        if not self.source.isidentifier():
            raise ValueError(f"source must be an identifier, not {self.source!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or \
                not 1 <= self.width <= 16:
            raise ValueError(f"width must be an integer from 1 to 16, not {self.width!r}")


#: Every activity counter and what drives it (hw/top.py). "Read" means an entry read whose
#: data is used: the weight, accumulator and parameter ports are enabled in more cycles than
#: that (see ``BufferReadsSignature``), so those counts come from the units' ``reads``.
ACTIVITY_EVENTS: tuple[Event, ...] = (
    Event(field="act_reads", source="act_read"),          # act_buf.read.en (execute)
    Event(field="act_writes", source="act_write"),        # act_buf.write.en (load)
    Event(field="wgt_reads", source="wgt_read"),          # execute.reads.wgt
    Event(field="wgt_writes", source="wgt_write"),        # wgt_buf.write.en (load)
    Event(field="acc_reads", source="acc_store_read"),    # store.reads.acc
    Event(field="acc_reads", source="acc_update_read"),   # an add-into update (execute)
    Event(field="acc_writes", source="acc_write"),        # acc_buf's write: update committed
    Event(field="param_reads", source="param_read"),      # store.reads.param
    Event(field="param_writes", source="param_write"),    # param_buf.write.en (load)
    Event(field="mem_read_beats", source="mem_read"),     # mem.req handshake, write = 0
    Event(field="mem_write_beats", source="mem_write"),   # mem.req handshake, write = 1
)


def vector_events(config: AcceleratorConfig) -> tuple[Event, ...]:
    """The vector unit's events (``config.vector``): its accumulator and parameter reads
    (``vector.reads``), its writes into the ACT and WGT buffers (its side of the write
    muxes it shares with the load unit) and the elements it takes in, up to ``cols`` per
    cycle."""
    return (
        Event(field="act_writes", source="vector_act_write"),   # vector.act_wr.en
        Event(field="wgt_writes", source="vector_wgt_write"),   # vector.wgt_wr.en
        Event(field="acc_reads", source="vector_acc_read"),     # vector.reads.acc
        Event(field="act_reads", source="vector_act_read"),     # vector.reads.act
        Event(field="param_reads", source="vector_param_read", width=2),  # vector.reads.param
        Event(field="vector_elements", source="vector_elements",
              width=config.cols.bit_length()),                  # vector.reads.elements
    )


def activity_events(config: AcceleratorConfig) -> tuple[Event, ...]:
    """The counter set of an accelerator built with ``config``: :data:`ACTIVITY_EVENTS`, and
    :func:`vector_events` with the vector unit (without it ``vector_elements`` has no
    source and reads 0)."""
    return ACTIVITY_EVENTS + (vector_events(config) if config.vector else ())


def driven_counter_bits(config: AcceleratorConfig, name: str) -> int:
    """Low bits of field ``name`` of ``isa.Counters`` that an accelerator built with
    ``config`` can make nonzero: ``counter_width``, or 0 for an activity counter with
    ``activity_counters=False`` or with no source (``vector_elements`` without the vector
    unit). (The UART bridge reads only those.)"""
    if name not in isa.PERF_COUNTERS + isa.ACTIVITY_COUNTERS:
        raise ValueError(f"{name!r} is not a field of isa.Counters")
    if name in isa.ACTIVITY_COUNTERS and (
            not config.activity_counters
            or not any(e.field == name for e in activity_events(config))):
        return 0
    return config.counter_width


class ActivityCounters(wiring.Component):
    """Counts the activity :attr:`events` while ``counting`` (the decoder's window).

    Like the ``late`` events of ``hw.counters.PerfCounters`` (the taps are spread over the
    whole chip), every source is registered twice on its way into its count, the second
    time after the sources of one field are added, and gated by a registered ``counting``
    (``hw.counters.add_counter``). That counts exactly the
    events of the counting window because every source is low while all units are idle,
    which they are in the cycles around the window's edges, and a unit is busy in the cycle
    of each of its events, so the last count lands no later than ``status.done`` rises.
    Counters wrap at ``2**config.counter_width``.

    Parameters
    ----------
    config : AcceleratorConfig
    events : tuple of Event or None
        The counter set (default ``activity_events(config)``).

    Attributes
    ----------
    events : In(StructLayout)
        One member per :attr:`Event.source`, :attr:`Event.width` bits.
    counting : In(1)
    counters : Out(StructLayout)
        The fields of ``isa.Counters`` that ``events`` feed, in ``isa.Counters`` order.
    """

    def __init__(self, config: AcceleratorConfig, events: tuple[Event, ...] | None = None):
        try:
            if events is None and isinstance(config, AcceleratorConfig):
                events = activity_events(config)
            self._check(config, events)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # a rejected component is not "never used"
            raise
        events = tuple(events)
        self._config = config
        self._events = events
        self._fields = tuple(f for f in isa.ACTIVITY_COUNTERS
                             if any(e.field == f for e in events))
        super().__init__({
            "events": In(data.StructLayout({e.source: unsigned(e.width) for e in events})),
            "counting": In(1),
            "counters": Out(counters_layout(self._fields)),
        })

    @staticmethod
    def _check(config: AcceleratorConfig, events) -> None:
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        events = tuple(events)
        if not events or not all(isinstance(e, Event) for e in events):
            raise ValueError("events must be a non-empty sequence of Event")
        sources = [e.source for e in events]
        dup = sorted({s for s in sources if sources.count(s) > 1})
        if dup:
            raise ValueError(f"event sources named twice: {', '.join(dup)}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields of ``isa.Counters`` counted, in ``isa.Counters`` order."""
        return self._fields

    def elaborate(self, platform):
        m = Module()
        counting_q = Signal()
        m.d.sync += counting_q.eq(self.counting)
        # Each source lands in a register of its own first: the taps are spread over the
        # whole chip, so no logic sits between a long route and a flip-flop.
        landed = {}
        for e in self._events:
            landed[e.source] = Signal(e.width, name=f"{e.source}_q")
            m.d.sync += landed[e.source].eq(self.events[e.source])
        for name in self._fields:
            feeds = [landed[e.source] for e in self._events if e.field == name]
            width = max(len(f) for f in feeds) + len(feeds) - 1  # room for their sum
            term = Signal(width, name=f"{name}_sum")
            total = feeds[0]
            for feed in feeds[1:]:
                total = total + feed
            m.d.comb += term.eq(total)
            count = add_counter(m, name, term, counting_q, self._config.counter_width)
            m.d.comb += self.counters[name].eq(count)
        return m
