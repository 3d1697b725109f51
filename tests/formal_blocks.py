"""Formal harnesses of single blocks: the decoder's verdict, the store and the load unit.

See tests/test_formal.py for what each proves and at which depth."""

from amaranth import *
from amaranth.hdl import Assert, Assume
from amaranth.lib import data

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.decoder import Decoder

from formal_harness import AnyConst, AnySeq, assume_decoder_commands

__all__ = ["CFG", "STORE_CFG", "LOAD_CFG", "isa_verdict", "DecoderHarness", "StoreHarness",
           "LoadHarness"]

CFG = AcceleratorConfig(rows=2, cols=2, act_depth=16, wgt_depth=4, acc_depth=16, param_depth=2,
                        mem_width=4, mem_bytes=1024)


def isa_verdict(word: Value, cfg: AcceleratorConfig) -> Value:
    """The first failing check of ``isa.instruction_checks`` for ``word`` (BAD_OPCODE for an
    unknown opcode, NONE if it passes), as a combinational expression."""
    verdict = C(isa.ErrorCode.BAD_OPCODE.value, 4)
    for op, layout in isa.INSTR_LAYOUTS.items():
        view = layout(word)
        fields = {name: Value.cast(view[name])
                  for name, _ in data.Layout.cast(layout) if name != "opcode"}
        first = C(isa.ErrorCode.NONE.value, 4)
        for code, failed in reversed(isa.instruction_checks(op, fields, cfg, Mux)):
            first = Mux(failed, code.value, first)
        verdict = Mux(isa.opcode_of(word) == op, first, verdict)
    return verdict


class DecoderHarness(Elaboratable):
    """One arbitrary word offered to a decoder whose units are always ready and idle.

    ``done_within``: cycles from reset by which a faulting word has raised ``done`` (fetch,
    ``check_cycles`` of checking, decode, the fault, the units' idle flag, done)."""

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        self.decoder = Decoder(cfg)
        self.done_within = self.decoder.check_cycles + 6

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = dec = self.decoder
        word = AnyConst(isa.INSTR_WIDTH)
        sent = Signal()
        cycle = Signal(range(self.done_within + 2))
        m.d.comb += [dec.instr.valid.eq(~sent), dec.instr.payload.eq(word),
                     dec.load_cmd.ready.eq(1), dec.exec_cmd.ready.eq(1),
                     dec.store_cmd.ready.eq(1)]
        if self.cfg.vector:
            m.d.comb += dec.vector_cmd.ready.eq(1)
        with m.If(dec.instr.valid & dec.instr.ready):
            m.d.sync += sent.eq(1)
        with m.If(cycle != self.done_within + 1):
            m.d.sync += cycle.eq(cycle + 1)

        expected = Signal(isa.ErrorCode)
        m.d.comb += expected.eq(isa_verdict(word, self.cfg))
        faults = expected != isa.ErrorCode.NONE
        dispatched = dec.load_cmd.valid | dec.exec_cmd.valid | dec.store_cmd.valid
        if self.cfg.vector:
            dispatched = dispatched | dec.vector_cmd.valid
        with m.If(dec.status.done):
            m.d.comb += Assert(dec.status.error == expected, "error code is the ISA's")
        with m.If(faults):
            m.d.comb += Assert(~dispatched, "a faulting word dispatches nothing")
        with m.If(faults & (cycle == self.done_within)):
            m.d.comb += Assert(dec.status.done, "done rises after a fault")
        return m


class StoreHarness(Elaboratable):
    """A store unit fed arbitrary valid STORE commands (held until taken, as the decoder
    does), arbitrary buffer data and an arbitrary memory ``ready``; its memory requests must
    keep the stream rule and write only inside the range of the command being executed."""

    def __init__(self, cfg: AcceleratorConfig, unit=None):
        from serrano.hw.loadstore import StoreUnit
        self.cfg = cfg
        self.store = StoreUnit(cfg) if unit is None else unit

    def elaborate(self, platform):
        m = Module()
        m.submodules.store = st = self.store
        cfg, W = self.cfg, self.cfg.mem_width
        cmd = st.cmd
        m.d.comb += [cmd.valid.eq(AnySeq(1)), cmd.payload.eq(AnySeq(len(cmd.payload.as_value()))),
                     st.acc_rd.data.eq(AnySeq(len(st.acc_rd.data.as_value()))),
                     st.param_rd.data.eq(AnySeq(len(st.param_rd.data.as_value()))),
                     st.mem_req.ready.eq(AnySeq(1))]
        p = cmd.payload
        fields = {"mode": p.raw, "acc_addr": p.acc_addr, "n_rows": p.n_rows,
                  "n_cols": p.n_cols, "param_addr": p.param_addr, "mem_addr": p.mem_addr,
                  "mem_stride": p.mem_stride, "reserved0": C(0, 6)}
        assume_decoder_commands(m, cmd, isa.Opcode.STORE, fields, cfg)

        # The range of the command being executed (a STORE is taken only when the unit idles).
        lo = Signal(34)
        hi = Signal(34)
        active = Signal()
        row = isa.store_row_bytes(p.n_cols, p.raw, Mux)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [active.eq(1), lo.eq(p.mem_addr),
                         hi.eq(isa.mem_extent_end(p.mem_addr, p.n_rows, p.mem_stride, row))]
        req = st.mem_req
        for i in range(W):
            byte = req.payload.addr * W + i
            with m.If(req.valid & req.payload.write & req.payload.mask[i]):
                m.d.comb += Assert(active & (byte >= lo) & (byte < hi),
                                   "a write outside the STORE's range")
        # Stream rule: a request not taken stays, unchanged.
        was_waiting = Signal()
        last = Signal.like(req.payload)
        m.d.sync += [was_waiting.eq(req.valid & ~req.ready), last.eq(req.payload)]
        with m.If(was_waiting):
            m.d.comb += Assert(req.valid & (req.payload.as_value() == last.as_value()),
                               "a request changed before it was taken")
        return m


STORE_CFG = AcceleratorConfig(rows=1, cols=2, act_depth=4, wgt_depth=1, acc_depth=4,
                              param_depth=2, mem_width=4, mem_bytes=256)


class LoadHarness(Elaboratable):
    """A load unit fed arbitrary valid LOAD commands (held until taken) and a memory that
    answers each accepted read once, after any delay, with any data; it must write only the
    entries ``buf_addr .. buf_addr + n_rows - 1`` of the command's target buffer."""

    def __init__(self, cfg: AcceleratorConfig, unit=None, *, check_reads: bool = False):
        from serrano.hw.loadstore import LoadUnit
        self.cfg = cfg
        self.load = LoadUnit(cfg) if unit is None else unit
        # The read-range check compares with the LOAD's memory end (a 16 x 24 multiply),
        # which makes the proof far slower (more than 12 minutes at depth 14 here).
        self.check_reads = check_reads

    def elaborate(self, platform):
        m = Module()
        m.submodules.load = ld = self.load
        cfg, cmd = self.cfg, ld.cmd
        p = cmd.payload
        m.d.comb += [cmd.valid.eq(AnySeq(1)), cmd.payload.eq(AnySeq(len(p.as_value()))),
                     ld.mem_req.ready.eq(AnySeq(1)), ld.mem_resp.valid.eq(AnySeq(1)),
                     ld.mem_resp.payload.eq(AnySeq(len(ld.mem_resp.payload)))]
        fields = {name: Value.cast(p[name]) for name in ("target", "buf_addr", "n_rows",
                                                        "row_bytes", "mem_addr", "mem_stride")}
        fields.update(reserved0=C(0, 6), reserved1=C(0, 8))
        assume_decoder_commands(m, cmd, isa.Opcode.LOAD, fields, cfg)
        # One response per accepted read, none early.
        outstanding = Signal(8)
        read = ld.mem_req.valid & ld.mem_req.ready
        m.d.sync += outstanding.eq(outstanding + read - ld.mem_resp.valid)
        m.d.comb += Assume(~ld.mem_resp.valid | (outstanding != 0))

        target = Signal(isa.LoadTarget)
        lo = Signal(17)
        hi = Signal(17)
        mem_lo = Signal(34)
        mem_hi = Signal(34)
        active = Signal()
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [active.eq(1), target.eq(p.target), lo.eq(p.buf_addr),
                         hi.eq(p.buf_addr + p.n_rows)]
        # Reads: every word requested holds at least one byte of the LOAD's memory range
        # (memory is read in whole words; the unit keeps the bytes it needs).
        if self.check_reads:
            with m.If(cmd.valid & cmd.ready):
                m.d.sync += [mem_lo.eq(p.mem_addr),
                             mem_hi.eq(isa.instruction_ends(isa.Opcode.LOAD, fields, cfg,
                                                            Mux)["mem"])]
            req, W = ld.mem_req, cfg.mem_width
            with m.If(req.valid):
                first = req.payload.addr * W
                m.d.comb += Assert(active & ~req.payload.write & (first < mem_hi) &
                                   (first + W > mem_lo), "a read outside the LOAD's memory range")
        for port, t in ((ld.act_wr, isa.LoadTarget.ACT), (ld.wgt_wr, isa.LoadTarget.WGT),
                        (ld.param_wr, isa.LoadTarget.PARAM)):
            with m.If(port.en):
                m.d.comb += Assert(active & (target == t) & (port.addr >= lo) &
                                   (port.addr < hi), "a buffer write outside the LOAD's range")
        return m


LOAD_CFG = AcceleratorConfig(rows=2, cols=2, act_depth=8, wgt_depth=2, acc_depth=4,
                             param_depth=2, mem_width=4, mem_bytes=256)
