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
    pulsing ``committed``. Updates see every earlier update, even of the same entry in
    consecutive cycles (accumulation across K tiles with a short M). ``read`` is the store
    unit's port.

    Parameters
    ----------
    config : AcceleratorConfig
    pipelined : bool
        ``True`` (latency 3): the block RAM's output is registered and the add has a cycle
        of its own, and the updates still in flight are forwarded to the add (the block RAM
        read alone took 4-5 ns of the ECP5's 6.7 ns at 150 MHz; the one-cycle version
        reached 77 MHz there). ``False`` (latency 1): the read is transparent to the write
        and read, add and write share a cycle; fewer registers, for the smallest FPGAs.
    """

    def __init__(self, config: AcceleratorConfig, *, pipelined: bool = True):
        self._config = config
        self._pipelined = pipelined
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
        return 3 if self._pipelined else 1

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols
        row = data.ArrayLayout(signed(32), cols)

        m.submodules.mem = mem = memory.Memory(shape=row, depth=self._config.acc_depth,
                                               init=[])
        wp = mem.write_port()
        if not self._pipelined:
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

        rmw_rd = mem.read_port()
        wiring.connect(m, wiring.flipped(self.read), mem.read_port())

        # Stage 0 reads; stage 1 has the block RAM's output; stage 2 adds; stage 3 writes.
        # The read misses the writes of the three updates ahead of it (written in its stage
        # 0, 1 or 2 cycle): at stage 2 those are s3 (being written), h1 and h2 (written one
        # and two cycles before). Which of them hold the same entry is decided in stage 1,
        # so stage 2 is a 4-way select and the adder.
        upd = data.StructLayout({"valid": 1, "addr": len(self.upd_addr), "accumulate": 1,
                                 "data": data.ArrayLayout(signed(self._config.psum_width),
                                                          cols)})
        wr = data.StructLayout({"valid": 1, "addr": len(self.upd_addr), "data": row})
        s1 = Signal(upd)
        s2 = Signal(upd)
        s2_old = Signal(row, reset_less=True)  # block RAM output, registered
        s2_hit = Signal(3)       # entry matches s3, h1, h2 (as they will be in stage 2)
        s3 = Signal(wr)
        h1 = Signal(wr)
        h2 = Signal(wr)

        m.d.comb += [
            rmw_rd.addr.eq(self.upd_addr),
            rmw_rd.en.eq(self.upd_valid),
            wp.addr.eq(s3.addr),
            wp.data.eq(s3.data),
            wp.en.eq(s3.valid),
            self.committed.eq(s3.valid),
        ]

        def hit(ahead):
            return ahead.valid & (ahead.addr == s1.addr)

        m.d.sync += [
            s1.valid.eq(self.upd_valid),
            s1.addr.eq(self.upd_addr),
            s1.accumulate.eq(self.upd_accumulate),
            s1.data.eq(self.upd_data),
            s2.eq(s1),
            s2_old.eq(rmw_rd.data),
            # In stage 2, s2's update is s3, s3's is h1 and h1's is h2.
            s2_hit.eq(Cat(hit(s2), hit(s3), hit(h1))),
            h1.eq(s3),
            h2.eq(h1),
            s3.valid.eq(s2.valid),
            s3.addr.eq(s2.addr),
        ]
        old = Signal(row)
        with m.If(~s2.accumulate):
            m.d.comb += old.eq(0)
        with m.Elif(s2_hit[0]):
            m.d.comb += old.eq(s3.data)
        with m.Elif(s2_hit[1]):
            m.d.comb += old.eq(h1.data)
        with m.Elif(s2_hit[2]):
            m.d.comb += old.eq(h2.data)
        with m.Else():
            m.d.comb += old.eq(s2_old)
        for c in range(cols):
            m.d.sync += s3.data[c].eq((old[c] + s2.data[c])[:32])
        return m
