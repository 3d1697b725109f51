"""On-chip SRAM buffers, all built on ``amaranth.lib.memory.Memory``."""

from amaranth import *
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .config import AcceleratorConfig

__all__ = ["Buffer", "AccumulatorBuffer"]


def _addr_width(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


class Buffer(wiring.Component):
    """A single-write, single-read SRAM (activation, weight and parameter buffers).

    ``write`` and ``read`` follow ``amaranth.lib.memory`` port semantics: a write takes effect
    at the clock edge; read data appears one cycle after the address (read enable high). The
    read port is not transparent: the decoder's scoreboard never lets a unit read an entry
    that another unit is still writing.
    """

    def __init__(self, shape, depth: int):
        self._shape, self._depth = shape, depth
        aw = _addr_width(depth)
        super().__init__({
            "write": Out(memory.WritePort.Signature(addr_width=aw, shape=shape)),
            "read": Out(memory.ReadPort.Signature(addr_width=aw, shape=shape)),
        })

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=self._shape, depth=self._depth, init=[])
        wiring.connect(m, wiring.flipped(self.write), mem.write_port())
        wiring.connect(m, wiring.flipped(self.read), mem.read_port())
        return m


class AccumulatorBuffer(wiring.Component):
    """int32 accumulator rows that an update either overwrites or adds into.

    An update (``upd_*``, one row per cycle, no backpressure) reads its entry, adds (int32,
    wrapping) when ``upd_accumulate`` is set, and writes the entry ``latency`` cycles later,
    pulsing ``committed``. The read for the add is transparent to that write, so back-to-back
    updates of the same entry (accumulation across K tiles with a short M) see each other.
    ``read`` is the store unit's port.
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = config
        row = data.ArrayLayout(signed(32), config.cols)
        aw = _addr_width(config.acc_depth)
        super().__init__({
            "upd_valid": In(1),
            "upd_addr": In(aw),
            "upd_accumulate": In(1),
            "upd_data": In(data.ArrayLayout(signed(config.psum_width), config.cols)),
            "committed": Out(1),
            "read": Out(memory.ReadPort.Signature(addr_width=aw, shape=row)),
        })

    @property
    def latency(self) -> int:
        """Cycles from an update to its write (and ``committed``)."""
        return 1

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols

        m.submodules.mem = mem = memory.Memory(
            shape=data.ArrayLayout(signed(32), cols), depth=self._config.acc_depth, init=[])
        wp = mem.write_port()
        rmw_rd = mem.read_port(transparent_for=(wp,))
        wiring.connect(m, wiring.flipped(self.read), mem.read_port())

        q_valid = Signal()
        q_addr = Signal.like(self.upd_addr)
        q_accumulate = Signal()
        q_data = Signal.like(self.upd_data)

        m.d.comb += [
            rmw_rd.addr.eq(self.upd_addr),
            rmw_rd.en.eq(self.upd_valid),
            wp.addr.eq(q_addr),
            wp.en.eq(q_valid),
            self.committed.eq(q_valid),
        ]
        for c in range(cols):
            old = Mux(q_accumulate, rmw_rd.data[c], 0)
            m.d.comb += wp.data[c].eq((old + q_data[c])[:32])

        m.d.sync += [
            q_valid.eq(self.upd_valid),
            q_addr.eq(self.upd_addr),
            q_accumulate.eq(self.upd_accumulate),
            q_data.eq(self.upd_data),
        ]
        return m
