"""Execute unit: runs MATMUL instructions on the systolic array."""

from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .array import SystolicArray
from .buffers import AccumulatorBuffer
from .config import AcceleratorConfig
from .delay import delay
from .footprint import RangeLayout
from .interfaces import (FOOTPRINT_WIDTH, AccUpdateSignature, BufferReadsSignature,
                         FootprintSignature, UnitActivitySignature)
from .mult import MultiplierTarget

__all__ = ["MatmulCmd", "ExecuteUnit"]


def MatmulCmd(config: AcceleratorConfig) -> data.StructLayout:
    """A decoded MATMUL as the decoder hands it to the execute unit: the MATMUL fields."""
    return isa.layout_subset(isa.MatmulInstr, "act_addr", "n_rows", "wgt_addr", "acc_addr",
                             "accumulate")


class ExecuteUnit(wiring.Component):
    """Two-stage in-order MATMUL engine around a :class:`SystolicArray`.

    Stage *preload* takes a MATMUL from ``cmd`` and shifts its weight tile from the weight
    buffer into the array's shadow registers, as early as the array's timing contract allows
    (``SystolicArray.preload_gap`` cycles after the current tile's first vector). Stage
    *stream* then reads one activation entry per cycle and feeds it to the array, the first
    one with ``swap``; a tag (accumulator address, accumulate flag) travels beside each vector
    for ``SystolicArray.latency`` cycles and meets its result at the array's output, which
    goes to the accumulator buffer. So consecutive MATMULs stream back to back whenever each
    streams at least ``2 * rows`` vectors.

    ``footprint`` tells the decoder what the unit will still read or write: ``pre_*`` for
    the instruction in the preload stage, ``stream_*`` for the one streaming, and ``drain``,
    the accumulator rows of instructions that have read their last vector but whose last
    result is not yet written (``acc_latency`` is the accumulator buffer's, which the drain
    covers). The pipeline has a fixed length, so a drain entry simply counts down
    ``drain_cycles``; two entries cover any mix of instruction lengths (a third one turns the
    newer entry into the whole accumulator buffer until it drains: conservative).
    """

    def __init__(self, config: AcceleratorConfig, target: MultiplierTarget | None = None, *,
                 acc_latency: int | None = None):
        self._config = config
        # None: the pipelined AccumulatorBuffer's (the top level passes its buffer's).
        self._acc_latency = (AccumulatorBuffer.latency_of(True) if acc_latency is None
                             else acc_latency)
        self.array = SystolicArray(config, target)
        c = config
        super().__init__({
            "cmd": In(stream.Signature(MatmulCmd(config))),
            "act_rd": In(memory.ReadPort.Signature(
                addr_width=c.act_addr_width,
                shape=data.ArrayLayout(signed(c.act_bits), c.rows))),
            "wgt_rd": In(memory.ReadPort.Signature(
                addr_width=c.wgt_addr_width,
                shape=data.ArrayLayout(signed(8), c.cols))),
            "acc_update": Out(AccUpdateSignature(config)),
            # stalled: holds work but issued no vector this cycle
            "activity": Out(UnitActivitySignature()),
            "footprint": Out(FootprintSignature()),
            # wgt: a weight row read into the array (``wgt_rd.en`` also covers the cycles a
            # tile waits in preload); ``rows`` pulses per MATMUL
            "reads": Out(BufferReadsSignature("wgt")),
        })

    @property
    def drain_cycles(self) -> int:
        """Cycles after an instruction's last vector read until its last accumulator write
        has taken effect: one buffer read, the array, the accumulator's read-modify-write
        (``acc_latency``, the :class:`AccumulatorBuffer`'s), the write."""
        return 1 + self.array.latency + self._acc_latency + 1

    def elaborate(self, platform):
        m = Module()
        rows = self._config.rows
        array = self.array

        m.submodules.array = array

        # ---- preload stage ------------------------------------------------------------
        pre_valid = Signal()
        pre = Signal(MatmulCmd(self._config))
        # Addresses, ends and counts are kept in registers of their own, computed when the
        # instruction arrives, so that no adder sits between a stage register and a buffer
        # address, the decoder's footprint compares or the stage-advance enables.
        pre_act_end = Signal(FOOTPRINT_WIDTH)
        pre_wgt_end = Signal(FOOTPRINT_WIDTH)
        pre_acc_end = Signal(FOOTPRINT_WIDTH)
        pre_last = Signal(16)                # n_rows - 1
        pre_single = Signal()                # n_rows == 1
        pre_wgt_k = Signal(range(max(2, rows)))  # next weight row to read, from wgt_addr
        pre_done = Signal()
        pre_wgt_last = Signal()              # pre_wgt_k == 0, a register (pre_done's enable)
        pre_wgt_ptr = Signal.like(self.wgt_rd.addr)  # wgt_addr + pre_wgt_k: the read address
        # Cycles since the current tile's swap vector was read, saturating. Its weight rows
        # reach the array one cycle after they are read, like the vectors.
        since_swap = Signal(range(array.preload_gap + 1), init=array.preload_gap)

        # ---- stream stage -------------------------------------------------------------
        st_valid = Signal()
        st = Signal(MatmulCmd(self._config))
        st_act_end = Signal(FOOTPRINT_WIDTH)
        st_acc_end = Signal(FOOTPRINT_WIDTH)
        st_act_ptr = Signal(16)  # next activation entry to read
        st_acc_ptr = Signal(16)  # its accumulator entry
        st_left = Signal(16)     # vectors left after the next one
        st_first = Signal()      # the next vector is the first (it carries swap)
        st_last = Signal()       # the next vector is the last
        take = Signal()        # preload stage hands its instruction to the stream stage

        weight_read = Signal()
        vector_read = Signal()
        swap_read = Signal()

        # Registered read strobes and tags: buffer read data arrives one cycle after the read.
        w_valid = Signal()
        tag_layout = data.StructLayout({"valid": 1, "swap": 1, "addr": unsigned(16),
                                        "accumulate": 1})
        vec = Signal(tag_layout)

        # since_swap >= preload_gap - 1, as a register (from since_swap's next value): it
        # gates the weight reads, which enable the weight pointer. With one row the gap is
        # always met.
        gap_ok = Signal(init=1)
        if array.preload_gap > 1:
            # (with two rows the compare would be a constant, which Verilator's lint rejects)
            reached = (since_swap >= array.preload_gap - 2) if array.preload_gap > 2 else C(1)
            m.d.sync += gap_ok.eq(~swap_read & reached)

        inflight_nz = self._inflight(m, vector_read)
        drain = self._drain(m, vector_read & st_last, st.acc_addr, st_acc_end)
        self._footprints(m, pre_valid, pre, pre_done, pre_act_end, pre_wgt_end, pre_acc_end,
                         st_valid, st, st_act_end, st_acc_end)
        m.d.comb += [
            vector_read.eq(st_valid),
            swap_read.eq(vector_read & st_first),
            # A shift may not overwrite a shadow weight that the tile now swapping in has not
            # copied yet: preload_gap cycles must separate the swap vector and the first row.
            weight_read.eq(pre_valid & ~pre_done & ~swap_read & gap_ok),
            # The stream stage frees up in the cycle it reads its last vector; the new tile's
            # swap vector is read in the next cycle, after its last weight row was read.
            # `take` is one LUT of registers: it is the clock enable of the stream stage's
            # hundred-odd registers (taking a cycle earlier would only help short tiles).
            take.eq(pre_valid & pre_done & (~st_valid | st_last)),
            # Only an empty preload stage takes a command: `take` comes late in the cycle and
            # must stay off the decoder's issue decision.
            self.cmd.ready.eq(~pre_valid),

            # The weight RAM reads whenever a tile is in preload (w_valid says which reads
            # count): its clock enable is then a register, not the gap logic.
            self.wgt_rd.en.eq(pre_valid),
            # The row's address is a register of its own, counted down beside pre_wgt_k, so
            # no carry chain sits in front of the block RAMs' address pins.
            self.wgt_rd.addr.eq(pre_wgt_ptr),
            self.act_rd.en.eq(vector_read),
            self.act_rd.addr.eq(st_act_ptr),

            self.footprint.issued.eq(vec.valid),
            self.reads.wgt.eq(w_valid),
            self.activity.stalled.eq((pre_valid | st_valid) & ~vec.valid),
            self.activity.busy.eq(pre_valid | st_valid | inflight_nz),
            self.footprint.drain.eq(drain),
        ]

        m.d.sync += [
            w_valid.eq(weight_read),
            vec.valid.eq(vector_read),
            vec.swap.eq(swap_read),
            vec.addr.eq(st_acc_ptr),
            vec.accumulate.eq(st.accumulate),
        ]

        with m.If(swap_read):
            m.d.sync += since_swap.eq(0)
        with m.Elif(since_swap != array.preload_gap):
            m.d.sync += since_swap.eq(since_swap + 1)

        # Preload stage.
        with m.If(weight_read):
            m.d.sync += [pre_wgt_k.eq(pre_wgt_k - 1), pre_wgt_ptr.eq(pre_wgt_ptr - 1)]
            m.d.sync += pre_wgt_last.eq(pre_wgt_k == 1)
            with m.If(pre_wgt_last):
                m.d.sync += pre_done.eq(1)
        # While empty (cmd.ready is ~pre_valid) the preload stage follows the command stream,
        # and only its valid flag depends on the handshake, which comes from the decoder's
        # issue decision late in the cycle.
        with m.If(~pre_valid):
            cmd = self.cmd.payload
            m.d.sync += [pre_valid.eq(self.cmd.valid), pre.eq(cmd),
                         pre_done.eq(0),
                         pre_act_end.eq(cmd.act_addr + cmd.n_rows),
                         pre_wgt_end.eq(cmd.wgt_addr + rows),
                         pre_acc_end.eq(cmd.acc_addr + cmd.n_rows),
                         pre_last.eq(cmd.n_rows - 1),
                         pre_single.eq(cmd.n_rows == 1),
                         pre_wgt_k.eq(rows - 1), pre_wgt_last.eq(rows == 1),
                         pre_wgt_ptr.eq(cmd.wgt_addr[:len(pre_wgt_ptr)] + rows - 1)]
        with m.Elif(take):
            m.d.sync += pre_valid.eq(0)

        # Stream stage.
        with m.If(take):
            m.d.sync += [st_valid.eq(1), st.eq(pre), st_act_end.eq(pre_act_end),
                         st_acc_end.eq(pre_acc_end), st_act_ptr.eq(pre.act_addr),
                         st_acc_ptr.eq(pre.acc_addr), st_left.eq(pre_last),
                         st_first.eq(1), st_last.eq(pre_single)]
        with m.Elif(vector_read):
            m.d.sync += [st_act_ptr.eq(st_act_ptr + 1), st_acc_ptr.eq(st_acc_ptr + 1),
                         st_left.eq(st_left - 1), st_first.eq(0), st_last.eq(st_left == 1)]
            with m.If(st_last):
                m.d.sync += st_valid.eq(0)

        self._array_io(m, vec, w_valid)
        return m

    def _array_io(self, m: Module, vec, w_valid: Value) -> None:
        """Buffer read data into the array; its results, met by the tags that travel beside
        each vector for the array's latency, out to the accumulator buffer."""
        array = self.array
        t = delay(m, vec, array.latency, name="tag_{}")
        m.d.comb += [
            array.a.eq(self.act_rd.data),
            array.swap.eq(vec.valid & vec.swap),
            array.w.eq(self.wgt_rd.data),
            array.w_shift.eq(w_valid),
            self.acc_update.valid.eq(t.valid),
            self.acc_update.addr.eq(t.addr),
            self.acc_update.accumulate.eq(t.accumulate),
            self.acc_update.data.eq(array.out),
        ]

    def _footprints(self, m, pre_valid, pre, pre_done, pre_act_end, pre_wgt_end, pre_acc_end,
                    st_valid, st, st_act_end, st_acc_end) -> None:
        """The preload and stream stages' ranges, for the decoder's scoreboard."""
        m.d.comb += [
            self.footprint.pre_act.valid.eq(pre_valid),
            self.footprint.pre_act.lo.eq(pre.act_addr),
            self.footprint.pre_act.hi.eq(pre_act_end),
            self.footprint.pre_wgt.valid.eq(pre_valid & ~pre_done),
            self.footprint.pre_wgt.lo.eq(pre.wgt_addr),
            self.footprint.pre_wgt.hi.eq(pre_wgt_end),
            self.footprint.pre_acc.valid.eq(pre_valid),
            self.footprint.pre_acc.lo.eq(pre.acc_addr),
            self.footprint.pre_acc.hi.eq(pre_acc_end),
            self.footprint.stream_act.valid.eq(st_valid),
            self.footprint.stream_act.lo.eq(st.act_addr),
            self.footprint.stream_act.hi.eq(st_act_end),
            self.footprint.stream_acc.valid.eq(st_valid),
            self.footprint.stream_acc.lo.eq(st.acc_addr),
            self.footprint.stream_acc.hi.eq(st_acc_end),
        ]

    def _inflight(self, m: Module, vector_read: Value) -> Signal:
        """Vectors read whose accumulator write has not committed; returns ``!= 0`` as a
        register (it is part of ``busy``)."""
        inflight = Signal(range(self.array.latency + self._acc_latency + 3))
        inflight_nz = Signal()
        committed = self.acc_update.committed
        m.d.sync += inflight.eq(inflight + vector_read - committed)
        with m.If(vector_read & ~committed):
            m.d.sync += inflight_nz.eq(1)
        with m.Elif(committed & ~vector_read):
            m.d.sync += inflight_nz.eq(inflight != 1)
        return inflight_nz

    def _drain(self, m: Module, finish: Value, lo: Value, hi: Value):
        """Accumulator ranges of instructions that read their last vector (``finish``) but
        whose last result is not yet written, in two entries that count down drain_cycles.

        An entry is free from the cycle its count reaches zero (or it was never taken) until
        it is taken. Entry i's "free" flag is a register: it picks which entry a finishing
        instruction takes, the clock enable of the entries' registers."""
        drain = Signal(data.ArrayLayout(RangeLayout(FOOTPRINT_WIDTH), 2))
        drain_left = [Signal(range(self.drain_cycles + 1), name=f"drain_left_{i}")
                      for i in range(2)]
        drain_free = [Signal(init=1, name=f"drain_free_{i}") for i in range(2)]
        for i in range(2):
            with m.If(drain_left[i] != 0):
                m.d.sync += drain_left[i].eq(drain_left[i] - 1)
            with m.Else():
                m.d.sync += drain[i].valid.eq(0)
        drain_take = [Signal(name=f"drain_take_{i}") for i in range(2)]
        m.d.comb += [
            drain_take[0].eq(finish & drain_free[0]),
            drain_take[1].eq(finish & ~drain_free[0]),
        ]
        for i in range(2):
            m.d.sync += drain_free[i].eq(~drain_take[i] & (drain_left[i] <= 1))
        # With both entries busy, entry 1 covers the whole buffer until it drains, rather
        # than the union of its range and the new one, whose compares would steer entry 1's
        # registers. Only MATMULs shorter than the pipeline (a third one ending within
        # drain_cycles) get here, and they merely make a STORE of the accumulator wait.
        with m.If(drain_take[0]):
            m.d.sync += [drain[0].valid.eq(1), drain[0].lo.eq(lo), drain[0].hi.eq(hi),
                         drain_left[0].eq(self.drain_cycles)]
        with m.If(drain_take[1]):
            m.d.sync += [drain[1].valid.eq(1), drain_left[1].eq(self.drain_cycles),
                         drain[1].lo.eq(Mux(drain_free[1], lo, 0)),
                         drain[1].hi.eq(Mux(drain_free[1], hi, self._config.acc_depth))]
        return drain
