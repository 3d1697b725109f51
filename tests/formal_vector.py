"""Formal harness of the vector unit's stream path (``hw.vector_ops.VectorOps``): its walker,
credit FIFO, input-stage plumbing and write register, with the engines replaced by abstract
ones that keep the engines' contract (blocks in order, tags passed through, any delay; a row
engine outputs only its output pass's blocks) and compute nothing (their results are
arbitrary). Against arbitrary valid commands (the decoder's ISA checks assumed, as in the
other unit harnesses) it asserts:

* every activation-buffer write is inside the destination hull of the command in flight;
* every accumulator read whose data is used is inside the source hull, every ``b`` read
  inside the second operand's hull (a mask row's for softmax);
* nothing is written while no command is in flight.
"""

from types import SimpleNamespace

from amaranth import *
from amaranth.hdl import Assert, Assume
from amaranth.lib import fifo, wiring

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.vector_ops import STREAM_OPCODES, VectorOps

from formal_harness import AnySeq, any_drive

__all__ = ["VCFG", "AbstractEngine", "AbstractVectorOps", "VectorOpsHarness"]

VCFG = AcceleratorConfig(rows=2, cols=2, act_depth=8, wgt_depth=2, acc_depth=8,
                         param_depth=8, mem_width=4, mem_bytes=64, vector=True)


class AbstractEngine(wiring.Component):
    """An engine's ports (copied from the real one's signature) with the contract only: it
    takes blocks whenever the solver says, and gives each output block's tag, in order,
    after any delay; a row engine (``rows=True``) counts passes by ``last`` and outputs only
    the third pass's blocks."""

    def __init__(self, real, rows: bool):
        real._MustUse__silence = True
        self._rows = rows
        self._tag_width = Shape.cast(real.o.payload.shape()["tag"].shape).width
        super().__init__(dict(real.signature.members))

    def elaborate(self, platform):
        m = Module()
        m.submodules.q = q = fifo.SyncFIFO(width=self._tag_width, depth=2)
        take = Signal()
        m.d.comb += [self.i.ready.eq(q.w_rdy & AnySeq(1)), take.eq(self.i.valid & self.i.ready)]
        out_pass = C(1)
        if self._rows:
            p = Signal(2)
            with m.If(take & self.i.payload.last):
                m.d.sync += p.eq(Mux(p == 2, 0, p + 1))
            out_pass = p == 2
        m.d.comb += [q.w_en.eq(take & out_pass), q.w_data.eq(Value.cast(self.i.payload.tag))]
        leave = AnySeq(1)
        m.d.comb += [self.o.valid.eq(q.r_rdy & leave), q.r_en.eq(leave),
                     Value.cast(self.o.payload.tag).eq(q.r_data)]
        any_drive(m, *(self.o.payload[name] for name, _ in self.o.payload.shape()
                       if name != "tag"))     # (the results: arbitrary)
        if self._rows:
            m.d.comb += [Value.cast(self.want_pass).eq(0), self.busy.eq(0)]
        return m


class AbstractVectorOps(VectorOps):
    """``VectorOps`` with :class:`AbstractEngine` engines."""

    def _make_engines(self, *, silent: bool = False) -> SimpleNamespace:
        real = super()._make_engines(silent=True)
        return SimpleNamespace(**{name: AbstractEngine(e, rows=name in ("softmax", "layernorm"))
                                  for name, e in vars(real).items()})


class VectorOpsHarness(Elaboratable):
    def __init__(self, cfg: AcceleratorConfig = VCFG, unit=None):
        self.cfg = cfg
        self.unit = AbstractVectorOps(cfg) if unit is None else unit

    def elaborate(self, platform):
        m = Module()
        m.submodules.ops = ops = self.unit
        cfg, cmd = self.cfg, ops.cmd
        p = cmd.payload
        any_drive(m, cmd.valid, p, ops.acc_rd.data, ops.act_rd.data, ops.param_rd.data,
                  ops.chan_rd.data)
        f = {name: Value.cast(p[name]) for name, _ in p.shape()}
        f.update(dst=C(isa.VectorDst.ACT.value, 2), transpose=C(0, 1), reserved0=C(0, 3))
        # The decoder's commands: a stream opcode whose ISA checks pass, held until taken.
        known = Cat(f["opcode"] == op.value for op in STREAM_OPCODES).any()
        m.d.comb += Assume(~cmd.valid | known)
        ends = {}
        for op in STREAM_OPCODES:
            failed = Cat(bad for _, bad in isa.instruction_checks(op, f, cfg, Mux)).any()
            m.d.comb += Assume(~cmd.valid | (f["opcode"] != op.value) | ~failed)
            ends[op] = isa.instruction_ends(op, f, cfg, Mux)
        held_valid, held = Signal(), Signal.like(p)
        m.d.sync += [held_valid.eq(cmd.valid & ~cmd.ready), held.eq(p)]
        with m.If(held_valid):
            m.d.comb += Assume(cmd.valid & (p.as_value() == held.as_value()))

        # The command in flight and its ranges.
        active = Signal()
        lo = {k: Signal(18, name=f"{k}_lo") for k in ("src", "dst", "b")}
        hi = {k: Signal(18, name=f"{k}_hi") for k in ("src", "dst", "b")}
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [active.eq(1), lo["src"].eq(p.src_addr), lo["dst"].eq(p.dst_addr),
                         lo["b"].eq(p.b_addr)]
            for op in STREAM_OPCODES:
                with m.If(p.opcode == op):
                    m.d.sync += [hi["src"].eq(ends[op]["src"]), hi["dst"].eq(ends[op]["dst"]),
                                 hi["b"].eq(ends[op].get("b", p.b_addr))]
        with m.Elif(~ops.busy):
            m.d.sync += active.eq(0)

        inside = lambda k, addr: (addr >= lo[k]) & (addr < hi[k])
        with m.If(ops.act_wr.en):
            m.d.comb += Assert(active & inside("dst", ops.act_wr.addr),
                               "an activation write outside the destination")
        with m.If(ops.reads.acc):
            m.d.comb += Assert(active & inside("src", ops.acc_rd.addr),
                               "a used accumulator read outside the source")
        with m.If(ops.reads.act):
            m.d.comb += Assert(active & inside("b", ops.act_rd.addr),
                               "a used b read outside the second operand")
        return m
