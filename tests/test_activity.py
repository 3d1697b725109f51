"""Activity counters (hw/activity.py): buffer entry reads and writes and memory beats, counted
the same by the golden model, pysim, the compiled model and over the UART bridge, on
hand-computed programs and on random ones (also under random memory timing); off, they read 0
everywhere and the timing does not change.

The compiled models are those of tests/test_compiled.py's default suite (cached under
build/compiled).
"""

from dataclasses import replace

import numpy as np
import pytest
from amaranth.lib import data

from serrano.hw import isa
from serrano.hw.activity import (ACTIVITY_EVENTS, ActivityCounters, Event, activity_events,
                                 driven_counter_bits)
from serrano.hw.config import AcceleratorConfig
from serrano.hw.counters import PerfCounters
from serrano.hw.isa import LoadTarget, Opcode, StoreMode, VectorDst, encode
from serrano.hw.uart import COUNTER_BYTES, PROTOCOL_VERSION
from serrano.sim.backend import COUNTER_NAMES, MemoryProfile
from serrano.sim.compiled import CompiledBackend
from serrano.sim.golden import GoldenBackend
from serrano.sim.pysim import PysimBackend
from programs import SMALL_CONFIGS, VECTOR_CONFIGS, random_program
from test_compiled import backend, needs_verilator

CFG = SMALL_CONFIGS["2x2_w4"]    # rows = cols = 2, 4-byte memory words
BUDGET = 200_000                 # cycles per program: a hang fails in seconds
ZERO = dict.fromkeys(isa.ACTIVITY_COUNTERS, 0)


def _counts(**nonzero: int) -> dict[str, int]:
    """What the golden model reports: instructions, array_busy and every activity field."""
    return {"array_busy": 0, "instructions": 0, **ZERO, **nonzero}


def _reported(got, ref) -> dict[str, int]:
    """The counters of ``got`` (a cycle-accurate backend's result) that ``ref`` (the golden
    model's) reports."""
    return {name: got.counters[name] for name in ref.counters}


# ---- hand-computed programs (2x2 array, 4-byte memory words) ---------------------------------

HALT = encode(Opcode.HALT)
# A LOAD of n rows writes n entries and requests, per row, every word the row's bytes touch:
# (lane + row_bytes - 1) // 4 + 1 words for a row starting at lane (address % 4).
LOAD_ACT = encode(Opcode.LOAD, target=LoadTarget.ACT, buf_addr=0, n_rows=3, row_bytes=2,
                  mem_addr=1, mem_stride=5)       # rows at 1, 6, 11: lanes 1, 2, 3 -> 1+1+2
LOAD_WGT = encode(Opcode.LOAD, target=LoadTarget.WGT, buf_addr=0, n_rows=2, row_bytes=2,
                  mem_addr=16, mem_stride=2)      # lanes 0, 2 -> 1+1 (the same word twice)
LOAD_PARAM = encode(Opcode.LOAD, target=LoadTarget.PARAM, buf_addr=0, n_rows=1,
                    row_bytes=24, mem_addr=32, mem_stride=0)  # 2 x 12 bytes -> 6 words
MATMUL = encode(Opcode.MATMUL, act_addr=0, n_rows=3, wgt_addr=0, acc_addr=0)
MATMUL_ADD = encode(Opcode.MATMUL, accumulate=1, act_addr=0, n_rows=3, wgt_addr=0, acc_addr=0)
# 3 rows of 2 int8 at 65, 68, 71 (lanes 1, 0, 3) -> 1+1+2 words; the parameter entry once.
STORE_Q = encode(Opcode.STORE, mode=StoreMode.REQUANT, acc_addr=0, n_rows=3, n_cols=2,
                 param_addr=0, mem_addr=65, mem_stride=3)
# 2 rows of 2 int32 (8 bytes) at lane 0 -> 2+2 words; no parameter read.
STORE_RAW = encode(Opcode.STORE, mode=StoreMode.RAW, acc_addr=0, n_rows=2, n_cols=2,
                   mem_addr=128, mem_stride=8)

CASES = {
    "load_act": ([LOAD_ACT, HALT], _counts(instructions=2, act_writes=3, mem_read_beats=4)),
    "load_wgt": ([LOAD_WGT, HALT], _counts(instructions=2, wgt_writes=2, mem_read_beats=2)),
    "load_param": ([LOAD_PARAM, HALT],
                   _counts(instructions=2, param_writes=1, mem_read_beats=6)),
    # One vector per row (array_busy, act_reads), the tile's 2 weight rows, one accumulator
    # write per row; adding into the accumulator also reads each row.
    "matmul": ([MATMUL, HALT], _counts(instructions=2, array_busy=3, act_reads=3,
                                       wgt_reads=2, acc_writes=3)),
    "matmul_add": ([MATMUL_ADD, HALT], _counts(instructions=2, array_busy=3, act_reads=3,
                                               wgt_reads=2, acc_writes=3, acc_reads=3)),
    "store_requant": ([STORE_Q, HALT], _counts(instructions=2, acc_reads=3, param_reads=1,
                                               mem_write_beats=4)),
    "store_raw": ([STORE_RAW, HALT], _counts(instructions=2, acc_reads=2, mem_write_beats=4)),
    "nop_fence": ([encode(Opcode.NOP), encode(Opcode.FENCE), HALT], _counts(instructions=3)),
    "all": ([LOAD_ACT, LOAD_WGT, LOAD_PARAM, MATMUL, MATMUL_ADD, STORE_Q, STORE_RAW, HALT],
            _counts(instructions=8, array_busy=6, act_reads=6, act_writes=3, wgt_reads=4,
                    wgt_writes=2, acc_reads=8, acc_writes=6, param_reads=1, param_writes=1,
                    mem_read_beats=12, mem_write_beats=8)),
    # A fault has no side effect: the STORE with a bad n_cols neither reads nor writes.
    "fault": ([LOAD_ACT, encode(Opcode.STORE, n_rows=1, n_cols=3, mem_addr=0), LOAD_WGT],
              _counts(instructions=1, act_writes=3, mem_read_beats=4)),
}


def _memory() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, 256, dtype=np.uint8)


@pytest.mark.parametrize("case", CASES)
def test_golden_counts_hand_computed(case):
    words, expect = CASES[case]
    assert GoldenBackend(CFG).run(words, _memory()).counters == expect


@needs_verilator
@pytest.mark.parametrize("case", CASES)
def test_compiled_counts_hand_computed(case):
    words, expect = CASES[case]
    got = backend(CFG).run(words, _memory(), max_cycles=BUDGET)
    assert {name: got.counters[name] for name in expect} == expect


def test_pysim_counts_hand_computed_and_off():
    """pysim counts the whole hand-computed program as computed; with
    ``activity_counters=False`` the activity fields read 0, the other counters (cycles
    included: the counters cost no time) are unchanged."""
    words, expect = CASES["all"]
    on = PysimBackend(CFG).run(words, _memory(), max_cycles=BUDGET)
    assert _reported(on, GoldenBackend(CFG).run(words, _memory())) == expect
    off_cfg = replace(CFG, activity_counters=False)
    off = PysimBackend(off_cfg).run(words, _memory(), max_cycles=BUDGET)
    assert {n: off.counters[n] for n in isa.ACTIVITY_COUNTERS} == ZERO
    assert {n: off.counters[n] for n in isa.PERF_COUNTERS} == \
        {n: on.counters[n] for n in isa.PERF_COUNTERS}
    assert off.status == on.status and np.array_equal(off.memory, on.memory)
    assert GoldenBackend(off_cfg).run(words, _memory()).counters == \
        {**expect, **ZERO}


def test_golden_counters_wrap_at_counter_width():
    """The golden model wraps like the hardware's ``counter_width``-bit counters."""
    cfg = replace(SMALL_CONFIGS["1x3_w1"], counter_width=16, act_depth=4096,
                  mem_bytes=1 << 16)
    # 4096 one-byte rows (rows = 1) over a one-byte port: 4096 writes and beats per LOAD.
    load = encode(Opcode.LOAD, target=LoadTarget.ACT, n_rows=4096, row_bytes=1,
                  mem_addr=0, mem_stride=1)
    words = [load] * 17 + [HALT]                # 17 x 4096 = 69,632 = 2**16 + 4096
    got = GoldenBackend(cfg).run(words, np.zeros(8192, np.uint8)).counters
    assert got["act_writes"] == got["mem_read_beats"] == 4096
    assert got["instructions"] == 18


@needs_verilator
@pytest.mark.slow
def test_compiled_wraps_and_off_like_golden():
    """The hardware's ``counter_width``-bit activity counters wrap as the golden model's do,
    and with ``activity_counters=False`` the compiled model reads 0 too (two more builds)."""
    cfg = replace(SMALL_CONFIGS["1x3_w1"], counter_width=16, act_depth=4096,
                  mem_bytes=1 << 16)
    load = encode(Opcode.LOAD, target=LoadTarget.ACT, n_rows=4096, row_bytes=1,
                  mem_addr=0, mem_stride=1)
    words, memory = [load] * 17 + [HALT], np.zeros(8192, np.uint8)
    ref = GoldenBackend(cfg).run(words, memory)
    got = CompiledBackend(cfg).run(words, memory, max_cycles=1_000_000)
    assert _reported(got, ref) == ref.counters
    assert got.counters["mem_read_beats"] == 4096
    words, expect = CASES["all"]
    off = CompiledBackend(replace(CFG, activity_counters=False)).run(words, _memory(),
                                                                     max_cycles=BUDGET)
    assert {n: off.counters[n] for n in expect} == {**expect, **ZERO}


# ---- the vector unit (VREQUANT) ------------------------------------------------------------------

VCFG = VECTOR_CONFIGS["2x2_vec16"]   # L = 2 lanes; the fuzz test's compiled build


def _vr(dst: VectorDst, *, transpose: int = 0, n_rows: int, n_elems: int,
        dst_addr: int = 0) -> int:
    return encode(Opcode.VREQUANT, dst=dst.value, transpose=transpose, src_addr=0,
                  src_stride=8, dst_addr=dst_addr, dst_stride=8, n_rows=n_rows,
                  n_elems=n_elems, param_addr=0)


# A VREQUANT of n_rows x n_elems (nb = ceil(n_elems / 2) blocks) reads one accumulator entry
# per row and block, each with its block's parameter entry, and takes in n_rows * n_elems
# elements; it writes n_rows entries per block, or transposed n_elems entries per row block
# (ceil(n_rows / 2) of them). A transposed tile's padding rows (past n_rows) count nothing.
VCASES = {
    # 3 x 4: 2 blocks -> 6 reads, 6 ACT writes, 12 elements
    "vrequant_act": ([_vr(VectorDst.ACT, n_rows=3, n_elems=4), HALT],
                     _counts(instructions=2, acc_reads=6, param_reads=6, act_writes=6,
                             vector_elements=12)),
    # 5 x 1: 1 block (one lane of two valid) -> 5 reads, 5 WGT writes, 5 elements
    "vrequant_wgt": ([_vr(VectorDst.WGT, n_rows=5, n_elems=1), HALT],
                     _counts(instructions=2, acc_reads=5, param_reads=5, wgt_writes=5,
                             vector_elements=5)),
    # 3 x 4 transposed: 2 row blocks of 2 tiles, the second row block half padding: 6 reads
    # (not 8), 2 x 4 columns written, 12 elements
    "vrequant_wgt_transposed": ([_vr(VectorDst.WGT, transpose=1, n_rows=3, n_elems=4), HALT],
                                _counts(instructions=2, acc_reads=6, param_reads=6,
                                        wgt_writes=8, vector_elements=12)),
    # 2 x 3 transposed: one row block, 2 tiles, 3 columns written
    "vrequant_act_transposed": ([_vr(VectorDst.ACT, transpose=1, n_rows=2, n_elems=3), HALT],
                                _counts(instructions=2, acc_reads=4, param_reads=4,
                                        act_writes=3, vector_elements=6)),
    # The load unit's and the vector unit's writes add up in act_writes (LOAD_ACT: 3 rows of
    # 2 bytes at lanes 1, 6, 3 of 8-byte words -> 3 beats), the STORE's and the VREQUANT's
    # reads in acc_reads and param_reads (STORE_Q: rows at lanes 1, 4, 7 -> 1+1+2 beats).
    "vrequant_mixed": ([LOAD_ACT, _vr(VectorDst.ACT, n_rows=3, n_elems=3, dst_addr=16),
                        STORE_Q, HALT],
                       _counts(instructions=4, act_writes=3 + 6, mem_read_beats=3,
                               acc_reads=6 + 3, param_reads=6 + 1, vector_elements=9,
                               mem_write_beats=4)),
    # A faulting VREQUANT (n_elems = 0) counts nothing, nor does anything after it.
    "vrequant_fault": ([_vr(VectorDst.ACT, n_rows=3, n_elems=4),
                        _vr(VectorDst.ACT, n_rows=3, n_elems=0), LOAD_ACT, HALT],
                       _counts(instructions=1, acc_reads=6, param_reads=6, act_writes=6,
                               vector_elements=12)),
}


def _vmemory() -> np.ndarray:
    return np.random.default_rng(6).integers(0, 256, 512, dtype=np.uint8)


@pytest.mark.parametrize("case", VCASES)
def test_golden_vrequant_counts_hand_computed(case):
    words, expect = VCASES[case]
    assert GoldenBackend(VCFG).run(words, _vmemory()).counters == expect


@needs_verilator
def test_compiled_vrequant_counts_hand_computed():
    got = backend(VCFG).run_sequence([(w, _vmemory()) for w, _ in VCASES.values()],
                                     max_cycles=BUDGET)
    for case, res in zip(VCASES, got):
        expect = VCASES[case][1]
        assert {name: res.counters[name] for name in expect} == expect, case


def test_pysim_vrequant_counts_hand_computed_and_off():
    """pysim counts every VREQUANT case as computed; with ``activity_counters=False`` the
    activity fields (vector_elements included) read 0 and nothing else changes."""
    jobs = [(w, _vmemory()) for w, _ in VCASES.values()]
    on = PysimBackend(VCFG).run_sequence(jobs, max_cycles=BUDGET)
    for case, res in zip(VCASES, on):
        expect = VCASES[case][1]
        assert {name: res.counters[name] for name in expect} == expect, case
    off_cfg = replace(VCFG, activity_counters=False)
    words, expect = VCASES["vrequant_mixed"]
    off = PysimBackend(off_cfg).run(words, _vmemory(), max_cycles=BUDGET)
    mixed = on[list(VCASES).index("vrequant_mixed")]
    assert {n: off.counters[n] for n in isa.ACTIVITY_COUNTERS} == ZERO
    assert {n: off.counters[n] for n in isa.PERF_COUNTERS} == \
        {n: mixed.counters[n] for n in isa.PERF_COUNTERS}
    assert off.status == mixed.status and np.array_equal(off.memory, mixed.memory)
    assert GoldenBackend(off_cfg).run(words, _vmemory()).counters == {**expect, **ZERO}


def test_golden_counts_of_the_stream_ops():
    """docs/performance.md's counts for VADD, VSOFTMAX, VLAYERNORM, VGELU (what
    ``hw.vector_ops`` reads; pysim's counters are checked against these in
    tests/test_vector_unit_ops.py): every pass reads each block's source entry, its ``b``
    entry and with ``pre`` its input-stage entry, except softmax's output pass (it reads
    only its stored exponentials); VLAYERNORM's output pass reads each block's channel
    entry; the scalars entry is read once; elements x passes; one write per block."""
    from serrano.sim.golden import _VECTOR_PASSES
    assert _VECTOR_PASSES == {Opcode.VADD: 1, Opcode.VGELU: 1, Opcode.VSOFTMAX: 3,
                              Opcode.VLAYERNORM: 3}
    g = GoldenBackend(VCFG)
    n_rows, n_elems = 3, 5
    nb = -(-n_elems // VCFG.cols)
    for op, with_b, pre in ((Opcode.VGELU, 0, 0), (Opcode.VGELU, 0, 1), (Opcode.VADD, 1, 1),
                            (Opcode.VSOFTMAX, 1, 0), (Opcode.VSOFTMAX, 0, 0),
                            (Opcode.VLAYERNORM, 1, 1), (Opcode.VLAYERNORM, 0, 0)):
        word = encode(op, dst=VectorDst.ACT.value, src_addr=0, src_stride=8, dst_addr=0,
                      dst_stride=8, n_rows=n_rows, n_elems=n_elems, param_addr=0,
                      with_b=with_b, pre=pre, b_addr=40)
        res = g.run([word, HALT], np.zeros(64, np.uint8))
        assert res.status.ok, (op, res.status)
        passes = _VECTOR_PASSES[op]
        used = n_rows * nb * (2 if op == Opcode.VSOFTMAX else passes)
        want = _counts(instructions=2, vector_elements=n_rows * n_elems * passes,
                       acc_reads=used, act_reads=used * with_b, act_writes=n_rows * nb,
                       param_reads=1 + pre * n_rows * nb * passes
                       + (n_rows * nb if op == Opcode.VLAYERNORM else 0))
        assert res.counters == want, (op, with_b, pre)


@needs_verilator
def test_random_vector_programs_compiled_against_golden():
    """Random programs with VREQUANTs (and malformed ones): every counter golden = compiled."""
    rng = np.random.default_rng(43)
    busy = dict.fromkeys(isa.ACTIVITY_COUNTERS, 0)
    jobs = [random_program(VCFG, rng, length=int(rng.integers(1, 14)), malformed=i % 4 == 3)
            for i in range(60)]
    refs = [GoldenBackend(VCFG).run(w, m) for w, m in jobs]
    for i, ((words, memory), ref) in enumerate(zip(jobs, refs)):
        got = backend(VCFG).run(words, memory, max_cycles=BUDGET)
        assert got.status == ref.status, f"program {i}"
        assert _reported(got, ref) == ref.counters, f"program {i}"
        for n in busy:
            busy[n] += ref.counters[n]
    assert all(busy.values()), busy


# ---- random programs: golden, pysim and compiled agree -----------------------------------------

@needs_verilator
@pytest.mark.parametrize("name", ["2x2_w4", "4x1_w16"])
def test_random_programs_compiled_against_golden(name):
    cfg = SMALL_CONFIGS[name]
    rng = np.random.default_rng(41)
    # (vector_elements has no source without the vector unit)
    busy = {n: 0 for n in isa.ACTIVITY_COUNTERS if driven_counter_bits(cfg, n)}
    for i in range(120):
        words, memory = random_program(cfg, rng, length=int(rng.integers(1, 16)),
                                       malformed=i % 3 == 2)
        ref = GoldenBackend(cfg).run(words, memory)
        got = backend(cfg).run(words, memory, max_cycles=BUDGET)
        assert got.status == ref.status, f"program {i}"
        assert _reported(got, ref) == ref.counters, f"program {i}"
        for n in busy:
            busy[n] += ref.counters[n]
    # every counter was exercised (the comparison is not between zeros)
    assert all(busy.values()), busy


PROFILE = MemoryProfile(seed=3, refuse=0.4, extra_latency=4)


@needs_verilator
def test_counts_do_not_depend_on_memory_timing():
    """Refused requests and late responses change the cycles, not the counts."""
    cfg = SMALL_CONFIGS["2x2_w4"]
    slow = backend(cfg, mem_profile=PROFILE)
    slower = 0
    for seed in range(30):
        words, memory = random_program(cfg, np.random.default_rng(seed))
        ref = GoldenBackend(cfg).run(words, memory)
        got = slow.run(words, memory, max_cycles=BUDGET)
        ideal = backend(cfg).run(words, memory, max_cycles=BUDGET)
        assert _reported(got, ref) == ref.counters, f"seed {seed}"
        slower += got.counters["cycles"] > ideal.counters["cycles"]
    assert slower > 10   # the profile did slow the programs down


def test_random_programs_pysim_against_golden():
    """A few programs on pysim too (the compiled model is its translation), one with a
    memory profile and one on a sequence of programs (counters restart after ``clear``)."""
    cfg = SMALL_CONFIGS["3x2_w8"]
    rng = np.random.default_rng(8)
    programs = [random_program(cfg, rng, length=10) for _ in range(3)]
    refs = GoldenBackend(cfg).run_sequence(programs)
    for i, (got, ref) in enumerate(zip(PysimBackend(cfg).run_sequence(programs,
                                                                      max_cycles=BUDGET),
                                       refs)):
        assert got.status == ref.status and _reported(got, ref) == ref.counters, i
    words, memory = programs[0]
    got = PysimBackend(cfg, mem_profile=PROFILE).run(words, memory, max_cycles=BUDGET)
    assert _reported(got, refs[0]) == refs[0].counters


# ---- the counter set, the layout, the configuration ---------------------------------------------

def test_counters_layout_appends_activity_fields():
    """The fields that existed before keep their offsets; the activity fields follow."""
    layout = data.Layout.cast(isa.Counters)
    assert COUNTER_NAMES == isa.PERF_COUNTERS + isa.ACTIVITY_COUNTERS
    for i, name in enumerate(COUNTER_NAMES):
        assert (layout[name].offset, layout[name].width) == (48 * i, 48), name
    assert COUNTER_BYTES == 18 * 6 and PROTOCOL_VERSION == 3
    assert COUNTER_NAMES[-1] == "vector_elements"
    # with the vector unit every activity field has an event source, and only activity
    # fields do; without it vector_elements has none
    assert {e.field for e in activity_events(VCFG)} == set(isa.ACTIVITY_COUNTERS)
    assert activity_events(CFG) == ACTIVITY_EVENTS
    assert {e.field for e in ACTIVITY_EVENTS} == set(isa.ACTIVITY_COUNTERS) - {"vector_elements"}
    # up to cols elements per cycle
    assert [e.width for e in activity_events(replace(VCFG, rows=8, cols=8))
            if e.field == "vector_elements"] == [4]


def test_config_and_events_are_validated():
    with pytest.raises(ValueError, match="activity_counters must be a bool"):
        AcceleratorConfig(activity_counters=1)
    assert "no activity counters" in AcceleratorConfig(activity_counters=False).describe()
    assert "activity" not in AcceleratorConfig().describe()
    with pytest.raises(ValueError, match="field must be one of"):
        Event(field="cycles", source="x")
    with pytest.raises(ValueError, match="width"):
        Event(field="act_reads", source="x", width=0)
    twice = (Event(field="act_reads", source="a"), Event(field="act_writes", source="a"))
    with pytest.raises(ValueError, match="named twice: a"):
        ActivityCounters(CFG, twice)
    with pytest.raises(ValueError, match="late names no counter"):
        PerfCounters(late=("act_reads",))
    off = replace(CFG, activity_counters=False, counter_width=20)
    assert driven_counter_bits(off, "cycles") == 20
    assert driven_counter_bits(off, "acc_reads") == 0
    assert driven_counter_bits(CFG, "acc_reads") == 48
    assert driven_counter_bits(CFG, "vector_elements") == 0      # no vector unit
    assert driven_counter_bits(VCFG, "vector_elements") == 48


def test_activity_counters_add_several_sources_and_wide_events():
    """An extension point: two sources feeding one field, one of them several bits wide
    (as a vector unit's elements per cycle will be), both counted in the window."""
    from serrano.hw.activity import ActivityCounters as AC
    from simutil import simulate
    events = (Event(field="acc_reads", source="one"),
              Event(field="acc_reads", source="many", width=3),
              Event(field="mem_read_beats", source="beat"))
    dut = AC(replace(CFG, counter_width=16), events)
    assert dut.fields == ("acc_reads", "mem_read_beats")
    pattern = [(1, 7, 1), (0, 3, 0), (1, 0, 1), (1, 5, 0)]

    async def bench(ctx):
        ctx.set(dut.counting, 1)
        for one, many, beat in pattern:
            ctx.set(dut.events.one, one)
            ctx.set(dut.events.many, many)
            ctx.set(dut.events.beat, beat)
            await ctx.tick()
        ctx.set(dut.events.one, 0)
        ctx.set(dut.events.many, 0)
        ctx.set(dut.events.beat, 0)
        await ctx.tick().repeat(3)
        assert ctx.get(dut.counters.acc_reads) == sum(a + b for a, b, _ in pattern)
        assert ctx.get(dut.counters.mem_read_beats) == 2
        # outside the window nothing is counted
        ctx.set(dut.counting, 0)
        await ctx.tick().repeat(2)
        ctx.set(dut.events.many, 7)
        await ctx.tick().repeat(4)
        assert ctx.get(dut.counters.acc_reads) == 18

    simulate(dut, bench, max_cycles=100, name="activity_sources")
