"""Property-based programs (hypothesis) dense in scoreboard hazards, compiled against golden.

Every program is valid, drawn from a small space of buffer entries and memory bytes so that
loads, MATMULs and stores in different units keep touching the same ranges. Each pair of
nearby instructions in different units is classified by the hazard it poses (the classes of
the decoder's scoreboard, ``hw/scoreboard.py``); the run must give the golden model's memory,
status and instruction count, and the programs together must hit every class. ``pytest -s``
prints how often each class was hit.
"""

import collections

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import LoadTarget, Opcode, StoreMode, encode
from serrano.sim.golden import GoldenBackend
from test_compiled import assert_identical, backend, needs_verilator

# A 1-byte memory port: a LOAD fills an entry in several cycles and a STORE drains a row in
# several, slower than a MATMUL streams, so an instruction dispatched too early does race.
CFG = AcceleratorConfig(rows=2, cols=2, act_depth=16, wgt_depth=4, acc_depth=16,
                        param_depth=2, mem_width=1, mem_bytes=1024)
MEM = 256                     # operand bytes: few, so memory ranges collide too
WINDOW = 4                    # instructions back that can still be in flight beside a new one


@st.composite
def instruction(draw) -> dict:
    kind = draw(st.sampled_from(["load", "load", "matmul", "store"]))
    if kind == "load":
        target = draw(st.sampled_from(list(LoadTarget)))
        depth = {LoadTarget.ACT: CFG.act_depth, LoadTarget.WGT: CFG.wgt_depth,
                 LoadTarget.PARAM: CFG.param_depth}[target]
        entry = {LoadTarget.ACT: CFG.act_entry_bytes, LoadTarget.WGT: CFG.wgt_entry_bytes,
                 LoadTarget.PARAM: CFG.param_entry_bytes}[target]
        n_rows = draw(st.integers(1, min(depth, 6)))
        row_bytes = draw(st.integers(1, entry))
        stride = draw(st.sampled_from([0, row_bytes, row_bytes + 3]))
        return dict(op=Opcode.LOAD, target=target, buf_addr=draw(st.integers(0, depth - n_rows)),
                    n_rows=n_rows, row_bytes=row_bytes, mem_stride=stride,
                    mem_addr=draw(st.integers(0, MEM - (n_rows - 1) * stride - row_bytes)))
    if kind == "matmul":
        # Long MATMULs stream while later loads and stores start: the overlaps that matter.
        n_rows = draw(st.integers(1, min(CFG.act_depth, CFG.acc_depth)))
        return dict(op=Opcode.MATMUL, act_addr=draw(st.integers(0, CFG.act_depth - n_rows)),
                    n_rows=n_rows, wgt_addr=draw(st.integers(0, CFG.wgt_depth - CFG.rows)),
                    acc_addr=draw(st.integers(0, CFG.acc_depth - n_rows)),
                    accumulate=draw(st.integers(0, 1)))
    mode = draw(st.sampled_from(list(StoreMode)[:2]))
    n_rows = draw(st.integers(1, 6))
    n_cols = draw(st.integers(1, CFG.cols))
    row = isa.store_row_bytes(n_cols, mode == StoreMode.RAW)
    stride = draw(st.sampled_from([0, row, row + 2]))
    return dict(op=Opcode.STORE, mode=mode, acc_addr=draw(st.integers(0, CFG.acc_depth - n_rows)),
                n_rows=n_rows, n_cols=n_cols, param_addr=draw(st.integers(0, CFG.param_depth - 1)),
                mem_stride=stride, mem_addr=draw(st.integers(0, MEM - (n_rows - 1) * stride - row)))


@st.composite
def follower(draw, earlier: dict) -> dict:
    """An instruction of another unit whose range overlaps the tail of ``earlier``'s (where a
    dispatch that does not wait would race it), or a fresh one when no class applies."""
    later = draw(instruction())
    if earlier["op"] == Opcode.FENCE:
        return later
    classes = [(second, buf) for first, second, buf in HAZARDS.values()
               if first == earlier["op"] and later["op"] == second]
    if not classes:
        return later
    second, buf = draw(st.sampled_from(classes))
    lo, hi = _ranges(earlier).get(buf, (None, None))
    if lo is None:
        return later
    # Somewhere in the range, often its last entries: those are touched last, so a
    # follower that does not wait races them.
    start = draw(st.one_of(st.integers(lo, hi - 1), st.integers(max(lo, hi - 3), hi - 1)))
    if buf == "mem":
        later["mem_addr"] = min(start, MEM - _ranges(later)["mem"][1] + later["mem_addr"])
    elif later["op"] == Opcode.LOAD:
        later["target"] = LoadTarget[buf.upper()]
        depth = {"act": CFG.act_depth, "wgt": CFG.wgt_depth, "param": CFG.param_depth}[buf]
        entry = {"act": CFG.act_entry_bytes, "wgt": CFG.wgt_entry_bytes,
                 "param": CFG.param_entry_bytes}[buf]
        later["n_rows"] = min(later["n_rows"], depth)
        later["row_bytes"] = min(later["row_bytes"], entry)
        later["buf_addr"] = min(start, depth - later["n_rows"])
        extent = (later["n_rows"] - 1) * later["mem_stride"] + later["row_bytes"]
        later["mem_addr"] = min(later["mem_addr"], MEM - extent)
    elif later["op"] == Opcode.MATMUL:
        key = {"act": "act_addr", "wgt": "wgt_addr", "acc": "acc_addr"}[buf]
        limit = {"act": CFG.act_depth - later["n_rows"], "wgt": CFG.wgt_depth - CFG.rows,
                 "acc": CFG.acc_depth - later["n_rows"]}[buf]
        later[key] = min(start, limit)
    elif buf == "acc":
        later["acc_addr"] = min(start, CFG.acc_depth - later["n_rows"])
    else:                                           # a requantizing STORE reading param
        later["mode"], later["param_addr"] = StoreMode.REQUANT, start
        row = isa.store_row_bytes(later["n_cols"], False)
        extent = (later["n_rows"] - 1) * later["mem_stride"] + row
        later["mem_addr"] = min(later["mem_addr"], MEM - extent)
    return later


@st.composite
def program(draw) -> list[dict]:
    """Segments of 2 to 4 instructions, each following its predecessor with a deliberate
    overlap; a FENCE between segments lets the next one start on idle units, where a
    dispatch that does not wait would race (chained behind long MATMULs it rarely can)."""
    prog: list[dict] = []
    for _ in range(draw(st.integers(1, 4))):
        if prog:
            prog.append(dict(op=Opcode.FENCE))
        prog.append(draw(instruction()))
        for _ in range(draw(st.integers(1, 3))):
            prog.append(draw(follower(prog[-1])) if draw(st.integers(0, 3)) else
                        draw(instruction()))
    return prog


def _encode(ins: dict) -> int:
    fields = {k: (v.value if hasattr(v, "value") else v) for k, v in ins.items() if k != "op"}
    return encode(ins["op"], **fields)


def _ranges(ins: dict) -> dict[str, tuple[int, int]]:
    """The buffer and memory ranges an instruction reads or writes, as ``[lo, hi)``."""
    op = ins["op"]
    if op == Opcode.FENCE:
        return {}
    if op == Opcode.LOAD:
        mem_hi = isa.mem_extent_end(ins["mem_addr"], ins["n_rows"], ins["mem_stride"],
                                    ins["row_bytes"])
        return {ins["target"].name.lower(): (ins["buf_addr"], ins["buf_addr"] + ins["n_rows"]),
                "mem": (ins["mem_addr"], mem_hi)}
    if op == Opcode.MATMUL:
        return {"act": (ins["act_addr"], ins["act_addr"] + ins["n_rows"]),
                "wgt": (ins["wgt_addr"], ins["wgt_addr"] + CFG.rows),
                "acc": (ins["acc_addr"], ins["acc_addr"] + ins["n_rows"])}
    row = isa.store_row_bytes(ins["n_cols"], ins["mode"] == StoreMode.RAW)
    ranges = {"acc": (ins["acc_addr"], ins["acc_addr"] + ins["n_rows"]),
              "mem": (ins["mem_addr"], isa.mem_extent_end(ins["mem_addr"], ins["n_rows"],
                                                          ins["mem_stride"], row))}
    if ins["mode"] == StoreMode.REQUANT:
        ranges["param"] = (ins["param_addr"], ins["param_addr"] + 1)
    return ranges


# (earlier opcode, later opcode, range): the scoreboard's hazard classes. Loads write their
# target and read memory, MATMULs read act/wgt and write acc, stores read acc/param and
# write memory.
HAZARDS = {
    "LOAD act after MATMUL reads it (WAR)": (Opcode.MATMUL, Opcode.LOAD, "act"),
    "LOAD wgt after MATMUL reads it (WAR)": (Opcode.MATMUL, Opcode.LOAD, "wgt"),
    "LOAD param after STORE reads it (WAR)": (Opcode.STORE, Opcode.LOAD, "param"),
    "LOAD memory after STORE writes it (RAW)": (Opcode.STORE, Opcode.LOAD, "mem"),
    "MATMUL act after LOAD writes it (RAW)": (Opcode.LOAD, Opcode.MATMUL, "act"),
    "MATMUL wgt after LOAD writes it (RAW)": (Opcode.LOAD, Opcode.MATMUL, "wgt"),
    "MATMUL acc after STORE reads it (WAR)": (Opcode.STORE, Opcode.MATMUL, "acc"),
    "STORE acc after MATMUL writes it (RAW)": (Opcode.MATMUL, Opcode.STORE, "acc"),
    "STORE param after LOAD writes it (RAW)": (Opcode.LOAD, Opcode.STORE, "param"),
    "STORE memory after LOAD reads it (WAR)": (Opcode.LOAD, Opcode.STORE, "mem"),
}


def hazards(program: list[dict]) -> collections.Counter:
    """How many pairs of nearby instructions in different units pose each hazard."""
    hits = collections.Counter()
    for j, later in enumerate(program):
        since_fence = [k for k in range(j) if program[k]["op"] == Opcode.FENCE]
        first = max([max(0, j - WINDOW)] + [k + 1 for k in since_fence])
        for earlier in program[first:j]:
            for name, (first, second, buf) in HAZARDS.items():
                if (earlier["op"], later["op"]) != (first, second):
                    continue
                a, b = _ranges(earlier).get(buf), _ranges(later).get(buf)
                if a and b and a[0] < b[1] and b[0] < a[1]:
                    hits[name] += 1
    return hits


# After the program, the whole accumulator buffer goes to memory above the operands (raw
# int32), so a MATMUL that read a stale activation or weight shows, not only bad stores.
DUMP = [encode(Opcode.FENCE),
        encode(Opcode.STORE, mode=StoreMode.RAW.value, acc_addr=0, n_rows=CFG.acc_depth,
               n_cols=CFG.cols, mem_addr=2 * MEM,
               mem_stride=isa.store_row_bytes(CFG.cols, True))]


@needs_verilator
def test_hazard_dense_programs_match_golden():
    golden, compiled = GoldenBackend(CFG), backend(CFG)
    seen = collections.Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(program(), st.integers(0, 2**32 - 1))
    def check(program, seed):
        words = [_encode(ins) for ins in program] + DUMP + [encode(Opcode.HALT)]
        memory = np.random.default_rng(seed).integers(0, 256, CFG.mem_bytes, dtype=np.uint8)
        ref = golden.run(words, memory)
        assert ref.status.error == isa.ErrorCode.NONE, "the strategy draws valid programs"
        got = compiled.run(words, memory, max_cycles=100_000)
        assert_identical(got, ref, f"program {[hex(w) for w in words]}", counters=False)
        assert {n: got.counters[n] for n in ref.counters} == ref.counters
        seen.update(hazards(program))

    check()
    for name in HAZARDS:
        print(f"{seen[name]:6d}  {name}")
    assert set(seen) == set(HAZARDS), f"classes never hit: {set(HAZARDS) - set(seen)}"
