"""Formal harness of the execute unit: it reads and writes only its MATMULs' ranges.

The unit is fed arbitrary valid MATMULs (held until taken, as the decoder does), arbitrary
buffer data and an arbitrary accumulator ``committed`` flag. The harness keeps its own
record of the commands taken, in order, and asserts:

* **activation reads** (``act_rd.en``) are exactly ``act_addr, act_addr + 1, ...,
  act_addr + n_rows - 1`` of each command in turn, and no read happens without a command;
* **accumulator writes** (``acc_update.valid``) come exactly ``1 + array.latency`` cycles
  after a vector read (fixed pipeline) and go to that vector's row ``acc_addr + i`` of its
  command, with its ``accumulate`` flag: every write lands inside ``[acc_addr, acc_addr +
  n_rows)``;
* **weight reads** (``wgt_rd.en``) address the newest command's tile ``[wgt_addr, wgt_addr +
  rows)``, or ``wgt_addr - 1``: the RAM reads whenever a tile is in preload and its row
  pointer counts down past the tile's first row after the last counted read (documented in
  ``hw/execute.py``: "w_valid says which reads count"). That read is discarded; a read has
  no side effect, so it writes nothing and the host's promise holds.
"""

from amaranth import *
from amaranth.hdl import Assert
from amaranth.lib import wiring

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.execute import ExecuteUnit

from formal_harness import any_drive, assume_decoder_commands

__all__ = ["ExecuteHarness"]


class ExecuteHarness(Elaboratable):
    def __init__(self, cfg: AcceleratorConfig, unit: ExecuteUnit | None = None):
        self.cfg = cfg
        self.unit = ExecuteUnit(cfg) if unit is None else unit

    def elaborate(self, platform):
        m = Module()
        m.submodules.execute = ex = self.unit
        cfg, cmd = self.cfg, ex.cmd
        p = cmd.payload
        # Everything the unit takes in, arbitrary (robust to added input ports).
        for path, member, value in ex.signature.flatten(ex):
            if member.flow == wiring.In:
                any_drive(m, value)
        fields = {name: Value.cast(p[name]) for name in ("act_addr", "n_rows", "wgt_addr",
                                                        "acc_addr")}
        fields.update(reserved0=C(0, 1), reserved1=C(0, 1))
        assume_decoder_commands(m, cmd, isa.Opcode.MATMUL, fields, cfg)
        taken = cmd.valid & cmd.ready

        # The commands still to stream: a (the oldest) and b, with a's next row index.
        a_valid, b_valid = Signal(), Signal()
        a, b = Signal.like(p, name="cmd_a"), Signal.like(p, name="cmd_b")
        a_row = Signal(16)
        newest = Signal.like(p, name="cmd_newest")
        act = ex.act_rd
        read = act.en
        last_row = read & (a_row == a.n_rows - 1)
        with m.If(read):
            m.d.comb += Assert(a_valid & (act.addr == (a.act_addr + a_row)[:len(act.addr)]),
                               "an activation read outside the streaming MATMUL's rows")
            m.d.sync += a_row.eq(a_row + 1)
        with m.If(taken):
            m.d.sync += newest.eq(p)
            m.d.comb += Assert(~(a_valid & b_valid) | last_row,
                               "a third MATMUL taken before the first streamed")
        with m.If(last_row):
            m.d.sync += [a_row.eq(0), a.eq(b), a_valid.eq(b_valid), b_valid.eq(0)]
            with m.If(taken):
                with m.If(b_valid):
                    m.d.sync += [b.eq(p), b_valid.eq(1)]
                with m.Else():
                    m.d.sync += [a.eq(p), a_valid.eq(1)]
        with m.Elif(taken):
            with m.If(a_valid):
                m.d.sync += [b.eq(p), b_valid.eq(1)]
            with m.Else():
                m.d.sync += [a.eq(p), a_valid.eq(1)]

        # Each vector read's accumulator row, through a delay line as long as the pipeline.
        lat = 1 + ex.array.latency
        pipe = [(Signal(name=f"exp_valid_{i}"), Signal(16, name=f"exp_addr_{i}"),
                 Signal(name=f"exp_acc_{i}")) for i in range(lat)]
        m.d.sync += [pipe[0][0].eq(read), pipe[0][1].eq(a.acc_addr + a_row),
                     pipe[0][2].eq(a.accumulate)]
        for (v0, a0, c0), (v1, a1, c1) in zip(pipe, pipe[1:]):
            m.d.sync += [v1.eq(v0), a1.eq(a0), c1.eq(c0)]
        up = ex.acc_update
        v, addr, accumulate = pipe[-1]
        m.d.comb += Assert(up.valid == v, "an accumulator write that no vector read made")
        with m.If(up.valid):
            m.d.comb += Assert((up.addr == addr[:len(up.addr)]) & (up.accumulate == accumulate),
                               "an accumulator write outside its MATMUL's rows")

        w = ex.wgt_rd
        with m.If(w.en):
            lo = newest.wgt_addr
            m.d.comb += Assert(
                ((w.addr >= lo) & (w.addr < lo + cfg.rows)) |
                (w.addr == (lo - 1)[:len(w.addr)]),
                "a weight read outside the preloading MATMUL's tile")
        return m
