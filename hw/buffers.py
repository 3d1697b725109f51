"""On-chip SRAM buffers, all built on ``amaranth.lib.memory.Memory``."""

import functools
import operator

from amaranth import *
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .config import AcceleratorConfig
from .delay import delay_line
from .interfaces import AccUpdateSignature

__all__ = ["Buffer", "AccumulatorBuffer"]


def _addr_width(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


class Buffer(wiring.Component):
    """A single-write, single-read SRAM (activation, weight and parameter buffers).

    ``write`` and ``read`` follow ``amaranth.lib.memory`` port semantics: a write takes effect
    at the clock edge; read data appears one cycle after the address (read enable high). The
    read port is not transparent: the decoder's scoreboard never lets a unit read an entry
    that another unit is still writing.

    ``vector_reads`` (0, 1 or 2) adds that many read ports of the same kind for the vector
    unit (``hw.vector``), ``vector_read`` and ``vector_read2``; without them the buffer is
    exactly the one-port buffer.
    """

    def __init__(self, shape, depth: int, *, vector_reads: int = 0):
        if vector_reads not in (0, 1, 2):
            raise ValueError(f"vector_reads must be 0, 1 or 2, not {vector_reads!r}")
        self._shape, self._depth = shape, depth
        aw = _addr_width(depth)
        members = {
            "write": Out(memory.WritePort.Signature(addr_width=aw, shape=shape)),
            "read": Out(memory.ReadPort.Signature(addr_width=aw, shape=shape)),
        }
        self._vector_ports = ("vector_read", "vector_read2")[:vector_reads]
        for name in self._vector_ports:
            members[name] = Out(memory.ReadPort.Signature(addr_width=aw, shape=shape))
        super().__init__(members)

    @property
    def depth(self) -> int:
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=self._shape, depth=self._depth, init=[])
        wiring.connect(m, wiring.flipped(self.write), mem.write_port())
        wiring.connect(m, wiring.flipped(self.read), mem.read_port())
        for name in self._vector_ports:
            wiring.connect(m, wiring.flipped(getattr(self, name)), mem.read_port())
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
        ``True`` (latency 6): the update is registered on the way in, the block RAM's output
        is registered twice and the add has a cycle of its own, and the updates still in
        flight are forwarded to the add (on ECP5 the block RAM read alone takes most of a
        150 MHz cycle; see docs/fpga.md). ``False`` (latency
        1): the read is transparent to the write and read, add and write share a cycle;
        fewer registers, for the smallest FPGAs.
    vector_read : bool
        Add ``vector_read``, a second plain read port like ``read``, for the vector unit.
    """

    def __init__(self, config: AcceleratorConfig, *, pipelined: bool = True,
                 vector_read: bool = False):
        self._config = config
        self._pipelined = pipelined
        self._vector_read = vector_read
        row = data.ArrayLayout(signed(32), config.cols)
        aw = config.acc_addr_width
        members = {
            "update": In(AccUpdateSignature(config)),
            "read": Out(memory.ReadPort.Signature(addr_width=aw, shape=row)),
        }
        if vector_read:
            members["vector_read"] = Out(memory.ReadPort.Signature(addr_width=aw, shape=row))
        super().__init__(members)

    @property
    def latency(self) -> int:
        """Cycles from an update to its write (and ``committed``)."""
        return self.latency_of(self._pipelined)

    @staticmethod
    def latency_of(pipelined: bool) -> int:
        """:attr:`latency` of a buffer built with ``pipelined``."""
        return 6 if pipelined else 1

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols
        row = data.ArrayLayout(signed(32), cols)

        m.submodules.mem = mem = memory.Memory(shape=row, depth=self._config.acc_depth,
                                               init=[])
        wp = mem.write_port()
        if self._vector_read:
            wiring.connect(m, wiring.flipped(self.vector_read), mem.read_port())
        if not self._pipelined:
            rmw_rd = mem.read_port(transparent_for=(wp,))
            wiring.connect(m, wiring.flipped(self.read), mem.read_port())
            q_valid = Signal()
            q_addr = Signal.like(self.update.addr)
            q_accumulate = Signal()
            q_data = Signal.like(self.update.data)
            m.d.comb += [
                rmw_rd.addr.eq(self.update.addr),
                rmw_rd.en.eq(self.update.valid),
                wp.addr.eq(q_addr),
                wp.en.eq(q_valid),
                self.update.committed.eq(q_valid),
            ]
            for c in range(cols):
                old = Mux(q_accumulate, rmw_rd.data[c], 0)
                m.d.comb += wp.data[c].eq((old + q_data[c])[:32])
            m.d.sync += [
                q_valid.eq(self.update.valid),
                q_addr.eq(self.update.addr),
                q_accumulate.eq(self.update.accumulate),
                q_data.eq(self.update.data),
            ]
            return m

        rmw_rd = mem.read_port()
        wiring.connect(m, wiring.flipped(self.read), mem.read_port())

        # The update is registered on the way in (stage "-1", before the numbering below):
        # it comes from the end of the execute unit's tag pipeline, across the chip, and is
        # compared against the entries in flight (`hit_q`). The RAM's read address is then a
        # local register too.
        upd_valid = Signal()
        upd_addr = Signal.like(self.update.addr)
        upd_accumulate = Signal()
        upd_data = Signal.like(self.update.data, reset_less=True)
        m.d.sync += [upd_valid.eq(self.update.valid), upd_addr.eq(self.update.addr),
                     upd_accumulate.eq(self.update.accumulate), upd_data.eq(self.update.data)]

        # Stage 0 reads; stage 1 has the block RAM's output, stage 2 its register (which the
        # ECP5 flow folds into the RAM's output register); stage D = 3 adds into `w`; stage
        # D + 1 copies the sum into h1, which writes it in stage D + 2. (The copy lets `w`,
        # the adder's register, stay by the adder: the RAMs it would feed are spread over
        # the chip.)
        # The read misses the writes of the D + 2 updates ahead of it (written in its stage
        # 0..D+1 cycles): at stage D those are `w`, h1 (being written) and h2..h(D+1).
        # Only `w`, the immediate predecessor's sum, is new in stage D; the rest is selected
        # a stage earlier (`pre`, from h's and the RAM data, matched a stage before that),
        # so stage D is a 2-way select and the adder.
        depth = 3
        assert self.latency == depth + 3
        upd = data.StructLayout({"valid": 1, "addr": len(upd_addr), "accumulate": 1,
                                 "data": data.ArrayLayout(signed(self._config.psum_width),
                                                          cols)})
        wr = data.StructLayout({"valid": 1, "addr": len(upd_addr), "data": row})
        s1 = Signal(upd, name="s1")
        s = [s1, *delay_line(m, s1, depth - 1, name="s{}", first=2)]  # update, stage i
        ram = Signal(row, reset_less=True)   # RAM data in stage 2
        w = Signal(wr)
        h = delay_line(m, w, depth, name="h{}", first=1)
        pre = Signal(row, reset_less=True)   # stage D: the old value unless w has it

        m.d.comb += [
            rmw_rd.addr.eq(upd_addr),
            rmw_rd.en.eq(upd_valid),
            wp.addr.eq(h[0].addr),
            wp.data.eq(h[0].data),
            wp.en.eq(h[0].valid),
            self.update.committed.eq(h[0].valid),
        ]

        def same(a, b):
            return a.valid & (a.addr == b.addr)

        # same(s[-1], s[-2]) for use_w, registered a cycle earlier from their predecessors.
        same_q = Signal()
        m.d.sync += same_q.eq(same(s[-2], s[-3]))

        # In stage D-2, the updates that will be w, h1, ..., hD in stage D-1 are in
        # stage D, w, h1, ..., h(D-1).
        # The newest of them that has the entry is picked (none: the RAM data; no
        # accumulation: zero), as registered one-hot selects, so that stage D-1 is an AND-OR
        # with the RAM data in its last level, not a priority mux fed from the RAMs' output
        # registers all over the chip. The address compares behind the selects are
        # registered a stage earlier still, between the update entering stage 1 and the
        # predecessors of `ahead`.
        ahead = [s[-1], w, *h[:depth - 1]]
        before = [s[-2], s[-1], w, *h[:depth - 2]]      # ahead's entries a cycle earlier
        hit_q = Signal(len(ahead))
        m.d.sync += hit_q.eq(Cat(b.valid & (b.addr == upd_addr) for b in before))
        hits = list(hit_q)
        sels = [s[-3].accumulate & hit & ~Cat(*hits[:i]).any() if i else
                s[-3].accumulate & hit for i, hit in enumerate(hits)]
        sels.append(s[-3].accumulate & ~Cat(*hits).any())
        # Each column gets its own copy of the selects (and of use_w below), so no one
        # register drives 32 x cols AND gates across the chip. ("_replica" registers are
        # kept apart by the synthesis flows, see serrano.flows.yosys.KEEP_REPLICAS.)
        # stage D-1: one-hot: w, h1, ..., hD, the RAM
        pre_sel_c = [Signal(depth + 2, name=f"pre_sel_replica{c}") for c in range(cols)]
        # stage D: the predecessor (now w) has the entry
        use_w_c = [Signal(name=f"use_w_replica{c}") for c in range(cols)]
        selected = Signal(row)
        sources = [w.data, *(hi.data for hi in h[:depth]), ram]
        for c in range(cols):
            terms = [Mux(pre_sel_c[c][i], src[c], 0) for i, src in enumerate(sources)]
            m.d.comb += selected[c].eq(functools.reduce(operator.or_, terms))

        m.d.sync += [
            s[0].valid.eq(upd_valid),
            s[0].addr.eq(upd_addr),
            s[0].accumulate.eq(upd_accumulate),
            s[0].data.eq(upd_data),
            ram.eq(rmw_rd.data),
            *[sel_c.eq(Cat(*sels)) for sel_c in pre_sel_c],
            pre.eq(selected),
            *[u.eq(s[-2].accumulate & same_q) for u in use_w_c],
            w.valid.eq(s[-1].valid),
            w.addr.eq(s[-1].addr),
        ]
        # Both candidate sums are added, then selected: as a mux in front of the adders, use_w
        # (then one register for all columns) and the mux sat in front of the carry chains
        # (docs/fpga.md).
        for c in range(cols):
            sum_w = (w.data[c] + s[-1].data[c])[:32]
            sum_pre = (pre[c] + s[-1].data[c])[:32]
            m.d.sync += w.data[c].eq(Mux(use_w_c[c], sum_w, sum_pre))
        return m
