"""Instruction-level tests of the golden model (and of any backend listed in
``SERRANO_TEST_BACKENDS``, e.g. ``SERRANO_TEST_BACKENDS=pysim``: the directed tests observe
only memory, status and counters, so they apply to the hardware unchanged; checks of internal
buffers run on the golden model only).

The golden model is checked against directed expectations and, on random programs, against
``RefModel`` below: a deliberately naive pure-Python interpreter written from the ISA text
(``OPCODE_DOCS``/``ERROR_DOCS``) and ``numerics.mbqm_reference``, sharing no code with
``sim/golden.py`` except ``isa.decode``.
"""

import os

import numpy as np
import pytest
from amaranth.lib import data
from hypothesis import HealthCheck, given, settings, strategies as st

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, Opcode
from serrano.sim import numerics
from serrano.sim.asm import Program, pack_output_params
from serrano.sim.golden import GoldenBackend
from serrano.sim.runtime import make_backend

BACKENDS = ["golden"] + [b for b in os.environ.get("SERRANO_TEST_BACKENDS", "").split(",")
                         if b and b != "golden"]

# Rectangular on purpose (rows != cols), narrow memory port, small buffers.
CFG = AcceleratorConfig(rows=3, cols=4, act_depth=16, wgt_depth=9, acc_depth=12,
                        param_depth=3, mem_width=4, mem_bytes=1024)


@pytest.fixture(params=BACKENDS)
def make(request):
    name = request.param

    def factory(config: AcceleratorConfig = CFG):
        return make_backend(name, config)
    factory.name = name
    return factory


def raw(op: Opcode, **fields: int) -> int:
    """A word with arbitrary field bits (reserved bits, unassigned enum values)."""
    layout = data.Layout.cast(isa.INSTR_LAYOUTS[op])
    word = op.value
    for name, value in fields.items():
        f = layout[name]
        assert 0 <= value < (1 << f.width)
        word |= value << f.offset
    return word


def i8(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int8)


def run_ok(backend, prog: Program | list, mem: np.ndarray):
    words = prog.words if isinstance(prog, Program) else prog
    r = backend.run(words, mem, max_cycles=200_000)
    assert r.status.ok, r.status
    assert r.memory.dtype == np.uint8 and r.memory.shape == mem.shape
    assert r.counters["instructions"] == len(words)
    return r


def raw_out(mem: np.ndarray, addr: int, n_rows: int, n_cols: int, stride: int) -> np.ndarray:
    return np.stack([mem[addr + i * stride: addr + i * stride + 4 * n_cols].view("<i4")
                     for i in range(n_rows)])


# ---- LOAD / MATMUL / STORE basics ------------------------------------------------------------

def test_matmul_raw_store(make):
    c = CFG
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (7, c.rows), dtype=np.int8)
    w = rng.integers(-128, 128, (c.rows, c.cols), dtype=np.int8)
    mem = np.zeros(512, np.uint8)
    mem[0:21] = x.view(np.uint8).reshape(-1)
    mem[64:76] = w.view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 2, 7, c.rows, 0, c.rows)
    p.load("wgt", 3, c.rows, c.cols, 64, c.cols)
    p.matmul(act_addr=2, n_rows=7, wgt_addr=3, acc_addr=1, accumulate=0)
    p.store(acc_addr=1, n_rows=7, n_cols=c.cols, mem_addr=200, mem_stride=20, mode="raw")
    p.halt()
    r = run_ok(make(), p, mem)
    got = raw_out(r.memory, 200, 7, c.cols, 20)
    np.testing.assert_array_equal(got, x.astype(np.int32) @ w.astype(np.int32))
    # bytes between the rows are untouched
    assert not r.memory[216:220].any()
    np.testing.assert_array_equal(r.memory[:200], mem[:200])


def test_extremes_and_accumulate(make):
    c = CFG
    x = i8([[-128] * c.rows, [127] * c.rows, [-128, 127, -1]])
    w = i8([[-128] * c.cols, [127] * c.cols, [-128, 127, 0, 1]])
    mem = np.zeros(256, np.uint8)
    mem[0:9] = x.view(np.uint8).reshape(-1)
    mem[16:28] = w.view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 0, 3, 3, 0, 3)
    p.load("wgt", 0, 3, 4, 16, 4)
    p.matmul(0, 3, 0, 0, accumulate=0)
    p.matmul(0, 3, 0, 0, accumulate=1)   # doubles
    p.matmul(0, 3, 0, 3, accumulate=0)   # once, elsewhere
    p.matmul(0, 3, 0, 3, accumulate=0)   # overwrite: still once
    p.store(0, 6, 4, 64, 16, "raw")
    p.halt()
    r = run_ok(make(), p, mem)
    ref = x.astype(np.int32) @ w.astype(np.int32)
    got = raw_out(r.memory, 64, 6, 4, 16)
    np.testing.assert_array_equal(got[:3], 2 * ref)
    np.testing.assert_array_equal(got[3:], ref)


def _identity_weights(c: AcceleratorConfig) -> np.ndarray:
    w = np.zeros((c.rows, c.cols), np.int8)
    for k in range(min(c.rows, c.cols)):
        w[k, k] = 1
    return w


def test_load_partial_rows_zero_fill(make):
    c = CFG
    assert c.cols >= c.rows  # identity tile reveals whole activation entries
    mem = np.zeros(256, np.uint8)
    mem[0:3] = i8([5, -6, 7]).view(np.uint8)
    mem[8:11] = i8([-1, 2, 3]).view(np.uint8)
    mem[32:44] = _identity_weights(c).view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 0, 2, 3, 0, 0)       # entries 0 and 1 = [5, -6, 7] (stride 0)
    p.load("act", 1, 1, 2, 8, 0)       # entry 1 = [-1, 2, 0]: byte 2 zero-filled
    p.load("act", 2, 1, 1, 9, 5)       # entry 2 = [2, 0, 0]: unaligned address
    p.load("wgt", 0, 3, 4, 32, 4)
    p.matmul(0, 3, 0, 0, 0)
    p.store(0, 3, 4, 128, 16, "raw")
    # partial weight rows: row_bytes 2 -> columns 2, 3 of the tile are zero
    p.load("wgt", 3, 3, 2, 32, 4)
    p.matmul(0, 3, 3, 4, 0)
    p.store(4, 3, 4, 192, 16, "raw")
    p.halt()
    r = run_ok(make(), p, mem)
    np.testing.assert_array_equal(raw_out(r.memory, 128, 3, 4, 16),
                                  [[5, -6, 7, 0], [-1, 2, 0, 0], [2, 0, 0, 0]])
    np.testing.assert_array_equal(raw_out(r.memory, 192, 3, 4, 16),
                                  [[5, -6, 0, 0], [-1, 2, 0, 0], [2, 0, 0, 0]])


def test_weight_tile_rows_map_to_k(make):
    # Entry wgt_addr + k holds row k of the tile; a tile may start at any entry.
    c = CFG
    x = i8([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    w = i8(np.arange(c.rows * c.cols).reshape(c.rows, c.cols) - 5)
    mem = np.zeros(128, np.uint8)
    mem[0:9] = x.view(np.uint8).reshape(-1)
    mem[16:28] = w.view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 0, 3, 3, 0, 3)
    p.load("wgt", 5, 3, 4, 16, 4)   # tile at entries 5..7 (not a multiple of rows)
    p.matmul(0, 3, 5, 0, 0)
    p.store(0, 3, 4, 64, 16, "raw")
    p.halt()
    r = run_ok(make(), p, mem)
    np.testing.assert_array_equal(raw_out(r.memory, 64, 3, 4, 16), w.astype(np.int32))


def test_store_raw_partial_cols(make):
    c = CFG
    mem = np.full(256, 0xAA, np.uint8)
    mem[0:3] = i8([1, 2, 3]).view(np.uint8)
    mem[16:28] = i8(np.arange(12).reshape(3, 4)).view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 0, 1, 3, 0, 0)
    p.load("wgt", 0, 3, 4, 16, 4)
    p.matmul(0, 1, 0, 0, 0)
    p.store(0, 1, 3, 101, 0, "raw")  # 3 columns, unaligned
    p.halt()
    r = run_ok(make(), p, mem)
    ref = (i8([[1, 2, 3]]).astype(np.int32) @ np.arange(12).reshape(3, 4))[0]
    assert list(r.memory[101:113].view("<i4")) == list(ref[:3])
    assert r.memory[100] == 0xAA and r.memory[113] == 0xAA


def test_store_overlapping_rows_last_wins(make):
    mem = np.zeros(256, np.uint8)
    mem[0:9] = i8([[1, 0, 0], [2, 0, 0], [3, 0, 0]]).view(np.uint8).reshape(-1)
    mem[16:28] = _identity_weights(CFG).view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 0, 3, 3, 0, 3)
    p.load("wgt", 0, 3, 4, 16, 4)
    p.matmul(0, 3, 0, 0, 0)
    p.store(0, 3, 2, 64, 0, "raw")   # stride 0: every row to the same place
    p.store(0, 3, 2, 96, 4, "raw")   # rows overlap by one column
    p.halt()
    r = run_ok(make(), p, mem)
    assert list(r.memory[64:72].view("<i4")) == [3, 0]
    assert list(r.memory[96:112].view("<i4")) == [1, 2, 3, 0]


def test_store_requant(make):
    c = CFG
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (5, c.rows), dtype=np.int8)
    w = rng.integers(-128, 128, (c.rows, c.cols), dtype=np.int8)
    bias = np.array([100, -20000, 7, 0], np.int32)
    mult = np.array([1 << 30, 1518500250, 2**31 - 1, 1 << 30], np.int32)
    shift = np.array([-8, -9, -10, 1], np.int32)
    zp, lo, hi = np.array([0, -3, 5, 0]), np.array([-128, -128, 5, -10]), \
        np.array([127, 100, 127, 10])
    params = pack_output_params(bias, mult, shift, zp, lo, hi, c.cols)
    mem = np.zeros(512, np.uint8)
    mem[0:15] = x.view(np.uint8).reshape(-1)
    mem[32:44] = w.view(np.uint8).reshape(-1)
    mem[64:64 + 48] = params[0]
    p = Program()
    p.load("act", 0, 5, 3, 0, 3)
    p.load("wgt", 0, 3, 4, 32, 4)
    p.load("param", 2, 1, 48, 64, 0)
    p.matmul(0, 5, 0, 0, 0)
    p.store(0, 5, 4, 256, 8, "requant", param_addr=2)
    p.store(0, 5, 2, 320, 2, "requant", param_addr=2)  # 2 columns, packed rows
    p.halt()
    r = run_ok(make(), p, mem)
    acc = x.astype(np.int32) @ w.astype(np.int32)
    ref = numerics.output_stage(acc, bias, mult, shift, zp, lo, hi)
    got = np.stack([r.memory[256 + 8 * i: 260 + 8 * i] for i in range(5)]).view(np.int8)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(r.memory[320:330].view(np.int8).reshape(5, 2), ref[:, :2])


def test_requant_param_zero_fill_and_shift_saturation(make):
    # Shifts outside [-31, 30] fit the 8-bit field; the hardware saturates them, so 40 acts
    # as 30 and -40 as -31 (a 5-bit wrap would act as 8 / -8 and give different results).
    # A PARAM load of 12 bytes leaves columns 1.. of the entry all-zero (multiplier 0,
    # clamp [0, 0]).
    c = CFG
    dt = np.dtype([("bias", "<i4"), ("multiplier", "<i4"), ("shift", "i1"),
                   ("zero_point", "i1"), ("lo", "i1"), ("hi", "i1")])
    mem = np.zeros(512, np.uint8)
    mem[0:3] = i8([1, 127, 0]).view(np.uint8)
    mem[16:28] = i8([[1, 0, 5, 0], [0, 127, 0, 0], [0, 0, 0, 0]]).view(np.uint8).reshape(-1)
    acc = np.array([[1, 127 * 127, 5, 0]])
    for left, right in ((40, -40), (30, -31), (8, -8)):
        rec = np.zeros(c.cols, dt)
        rec["multiplier"] = [1, 2**31 - 1, 2**31 - 1, 0]
        rec["shift"] = [left, right, 0, 0]
        rec["lo"], rec["hi"] = -128, 127
        mem[64:112] = rec.view(np.uint8)
        p = Program()
        p.load("act", 0, 1, 3, 0, 0)
        p.load("wgt", 0, 3, 4, 16, 4)
        p.load("param", 0, 1, 48, 64, 0)        # all four columns
        p.load("param", 1, 1, 48, 64, 0)
        p.load("param", 1, 1, 12, 64, 0)        # column 0 only: the rest zero-filled
        p.matmul(0, 1, 0, 0, 0)
        p.store(0, 1, 4, 200, 0, "requant", param_addr=0)
        p.store(0, 1, 4, 210, 0, "requant", param_addr=1)
        p.halt()
        r = run_ok(make(), p, mem)
        row0 = r.memory[200:204].view(np.int8)
        row1 = r.memory[210:214].view(np.int8)
        sat_left, sat_right = min(max(left, -31), 30), min(max(right, -31), 30)
        exp = numerics.output_stage(acc, 0, rec["multiplier"].astype(np.int64),
                                    [sat_left, sat_right, 0, 0], 0)[0]
        assert list(row0) == list(exp), (left, right)
        assert list(row1) == [exp[0], 0, 0, 0]
        if left == 40:
            assert list(row0[:2]) == [1, 0]
        if left == 8:
            assert list(row0[:2]) == [0, 63]


def test_memory_image_shorter_than_extent(make):
    # Bytes past the image read as zero; writes past it are dropped; length is kept.
    mem = np.zeros(70, np.uint8)
    mem[60:70] = 1
    mem[0:12] = _identity_weights(CFG).view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 0, 2, 3, 68, 3)            # [1, 1, 0] and [0, 0, 0]
    p.load("wgt", 0, 3, 4, 0, 4)
    p.matmul(0, 2, 0, 0, 0)
    p.store(0, 2, 4, 40, 16, "raw")          # row 1 lands at 56..71: partly past the end
    p.halt()
    r = run_ok(make(), p, mem)
    assert r.memory.shape == (70,)
    assert list(r.memory[40:56].view("<i4")) == [1, 1, 0, 0]
    assert not r.memory[56:70].any()


def test_missing_halt_and_halt_stops(make):
    mem = np.zeros(128, np.uint8)
    mem[0:3] = i8([2, 0, 0]).view(np.uint8)
    mem[16:28] = _identity_weights(CFG).view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 0, 1, 3, 0, 0)
    p.load("wgt", 0, 3, 4, 16, 4)
    p.matmul(0, 1, 0, 0, 0)
    p.store(0, 1, 1, 64, 0, "raw")
    backend = make()
    r = backend.run(p.words, mem, max_cycles=100_000)
    assert (r.status.done, r.status.error) == (False, ErrorCode.NONE)
    assert r.counters["instructions"] == 4
    assert int(r.memory[64:68].view("<i4")[0]) == 2
    # HALT ends the program: the STORE after it never runs.
    q = Program(p.words)
    q.halt()
    q.store(0, 1, 1, 80, 0, "raw")
    r = backend.run(q.words, mem, max_cycles=100_000)
    assert r.status.ok and r.counters["instructions"] == 5
    assert not r.memory[80:84].any()


def test_nop_fence(make):
    p = Program()
    p.nop(); p.fence(); p.nop(); p.halt()
    r = run_ok(make(), p, np.zeros(16, np.uint8))
    assert r.status.fault_index == 0


def test_run_starts_fresh_and_run_sequence_keeps_buffers(make):
    backend = make()
    mem = np.zeros(128, np.uint8)
    mem[0:3] = i8([3, -4, 5]).view(np.uint8)
    mem[16:28] = _identity_weights(CFG).view(np.uint8).reshape(-1)
    p = Program()
    p.load("act", 4, 1, 3, 0, 0)
    p.load("wgt", 0, 3, 4, 16, 4)
    p.halt()
    q = Program()
    q.matmul(4, 1, 0, 2, 0)
    q.store(2, 1, 3, 64, 0, "raw")
    q.halt()
    if hasattr(backend, "run_sequence"):
        first, second = backend.run_sequence([(p.words, mem), (q.words, np.zeros(128, np.uint8))],
                                             max_cycles=100_000)
        assert first.status.ok and second.status.ok
        assert list(second.memory[64:76].view("<i4")) == [3, -4, 5]
    # A plain run() starts from zeroed buffers: the same second program now computes zeros.
    run_ok(backend, p, mem)
    junk = np.full(128, 0x11, np.uint8)
    r = run_ok(backend, q, junk)
    assert list(r.memory[64:76].view("<i4")) == [0, 0, 0]


@pytest.mark.parametrize("name", ["golden"])
def test_accumulator_wraps_int32(name):
    # rows=128: each MATMUL adds 128 * (-128 * -128) = 2**21; 2**10 of them reach 2**31,
    # which wraps to -2**31. (Thousands of cycles: golden only in the default suite.)
    c = AcceleratorConfig(rows=128, cols=1, act_depth=2, wgt_depth=128, acc_depth=2,
                          param_depth=1, mem_width=8, mem_bytes=4096)
    backend = make_backend(name, c)
    mem = np.zeros(512, np.uint8)
    mem[0:128] = 0x80
    mem[128:256] = 0x80
    p = Program()
    p.load("act", 0, 1, 128, 0, 0)
    p.load("wgt", 0, 128, 1, 128, 1)
    p.matmul(0, 1, 0, 0, 0)
    for _ in range(1023):
        p.matmul(0, 1, 0, 0, 1)
    p.store(0, 1, 1, 300, 0, "raw")
    p.matmul(0, 1, 0, 0, 1)
    p.store(0, 1, 1, 304, 0, "raw")
    p.halt()
    r = run_ok(backend, p, mem)
    assert int(r.memory[300:304].view("<i4")[0]) == -(1 << 31)
    assert int(r.memory[304:308].view("<i4")[0]) == -(1 << 31) + (1 << 21)


# ---- errors ----------------------------------------------------------------------------------

c = CFG
PE = isa.OUTPUT_PARAMS_BYTES * CFG.cols
LOAD_OK = dict(target=0, buf_addr=0, n_rows=1, row_bytes=1, mem_addr=0, mem_stride=0)
MM_OK = dict(act_addr=0, n_rows=1, wgt_addr=0, acc_addr=0)
ST_OK = dict(mode=1, acc_addr=0, n_rows=1, n_cols=1, param_addr=0, mem_addr=512, mem_stride=0)


def _ld(**kw):
    return raw(Opcode.LOAD, **{**LOAD_OK, **kw})


def _mm(**kw):
    return raw(Opcode.MATMUL, **{**MM_OK, **kw})


def _st(**kw):
    return raw(Opcode.STORE, **{**ST_OK, **kw})


ERROR_CASES = {
    "opcode_06": (0x06, ErrorCode.BAD_OPCODE),
    "opcode_0f": (0x0F, ErrorCode.BAD_OPCODE),
    "opcode_10": (0x10 | (1 << 100), ErrorCode.BAD_OPCODE),
    "opcode_ff": (0xFF, ErrorCode.BAD_OPCODE),
    "nop_reserved": (raw(Opcode.NOP, reserved0=1 << 119), ErrorCode.BAD_FIELD),
    "fence_reserved": (raw(Opcode.FENCE, reserved0=1), ErrorCode.BAD_FIELD),
    "halt_reserved": (raw(Opcode.HALT, reserved0=2), ErrorCode.BAD_FIELD),
    "load_reserved0": (_ld(reserved0=1), ErrorCode.BAD_FIELD),
    "load_reserved1": (_ld(reserved1=0x80), ErrorCode.BAD_FIELD),
    "load_target3": (_ld(target=3), ErrorCode.BAD_FIELD),
    "load_rows0": (_ld(n_rows=0), ErrorCode.BAD_SIZE),
    "load_bytes0": (_ld(row_bytes=0), ErrorCode.BAD_SIZE),
    "load_act_bytes": (_ld(target=0, row_bytes=c.rows + 1), ErrorCode.BAD_SIZE),
    "load_wgt_bytes": (_ld(target=1, row_bytes=c.cols + 1), ErrorCode.BAD_SIZE),
    "load_param_bytes": (_ld(target=2, row_bytes=PE + 1), ErrorCode.BAD_SIZE),
    "load_act_range": (_ld(target=0, buf_addr=c.act_depth - 1, n_rows=2), ErrorCode.BUF_RANGE),
    "load_wgt_range": (_ld(target=1, buf_addr=c.wgt_depth, n_rows=1), ErrorCode.BUF_RANGE),
    "load_param_range": (_ld(target=2, buf_addr=0, n_rows=c.param_depth + 1),
                         ErrorCode.BUF_RANGE),
    "load_addr_range": (_ld(mem_addr=c.mem_bytes - 2, row_bytes=3), ErrorCode.MEM_RANGE),
    "load_stride_range": (_ld(n_rows=3, mem_stride=c.mem_bytes // 2), ErrorCode.MEM_RANGE),
    "load_huge_addr": (_ld(mem_addr=(1 << 32) - 1), ErrorCode.MEM_RANGE),
    "mm_reserved0": (_mm(reserved0=4), ErrorCode.BAD_FIELD),
    "mm_reserved1": (_mm(reserved1=1 << 47), ErrorCode.BAD_FIELD),
    "mm_rows0": (_mm(n_rows=0), ErrorCode.BAD_SIZE),
    "mm_act_range": (_mm(act_addr=c.act_depth - 3, n_rows=4), ErrorCode.BUF_RANGE),
    "mm_wgt_range": (_mm(wgt_addr=c.wgt_depth - c.rows + 1), ErrorCode.BUF_RANGE),
    "mm_acc_range": (_mm(acc_addr=c.acc_depth, n_rows=1), ErrorCode.BUF_RANGE),
    "st_reserved0": (_st(reserved0=1), ErrorCode.BAD_FIELD),
    "st_mode2": (_st(mode=2), ErrorCode.BAD_FIELD),
    "st_mode3": (_st(mode=3), ErrorCode.BAD_FIELD),
    "st_rows0": (_st(n_rows=0), ErrorCode.BAD_SIZE),
    "st_cols0": (_st(n_cols=0), ErrorCode.BAD_SIZE),
    "st_cols_big": (_st(n_cols=c.cols + 1), ErrorCode.BAD_SIZE),
    "st_acc_range": (_st(acc_addr=c.acc_depth - 1, n_rows=2), ErrorCode.BUF_RANGE),
    "st_param_range": (_st(mode=0, param_addr=c.param_depth), ErrorCode.BUF_RANGE),
    "st_raw_mem_range": (_st(mode=1, n_cols=2, mem_addr=c.mem_bytes - 7), ErrorCode.MEM_RANGE),
    "st_requant_mem_range": (_st(mode=0, n_cols=2, mem_addr=c.mem_bytes - 1),
                             ErrorCode.MEM_RANGE),
    "st_stride_range": (_st(n_rows=2, mem_stride=c.mem_bytes), ErrorCode.MEM_RANGE),
    # check order: the first failing check wins
    "order_field_size": (_ld(reserved0=1, n_rows=0), ErrorCode.BAD_FIELD),
    "order_size_range": (_ld(n_rows=0, buf_addr=c.act_depth), ErrorCode.BAD_SIZE),
    "order_range_mem": (_ld(buf_addr=c.act_depth, mem_addr=c.mem_bytes), ErrorCode.BUF_RANGE),
    "order_st_field_size": (_st(mode=2, n_cols=0), ErrorCode.BAD_FIELD),
    "order_st_range_mem": (_st(acc_addr=c.acc_depth, mem_addr=c.mem_bytes),
                           ErrorCode.BUF_RANGE),
}

# Instructions exactly at their limits: valid.
BOUNDARY_OK = {
    "load_act_full": _ld(target=0, buf_addr=c.act_depth - 2, n_rows=2, row_bytes=c.rows),
    "load_param_full": _ld(target=2, buf_addr=c.param_depth - 1, row_bytes=PE),
    "load_mem_end": _ld(mem_addr=c.mem_bytes - 3, row_bytes=3),
    "load_stride_end": _ld(n_rows=3, mem_stride=(c.mem_bytes - 1) // 2, row_bytes=1),
    "mm_full": _mm(act_addr=0, n_rows=c.acc_depth, wgt_addr=c.wgt_depth - c.rows),
    "st_raw_end": _st(mode=1, n_cols=c.cols, mem_addr=c.mem_bytes - 4 * c.cols),
    "st_requant_end": _st(mode=0, n_cols=c.cols, mem_addr=c.mem_bytes - c.cols,
                          param_addr=c.param_depth - 1),
    "st_raw_ignores_param_addr": _st(mode=1, param_addr=0xFFFF),
}


def _setup_program() -> Program:
    """Fill every buffer with recognisable data and write one STORE result, so that a
    faulting instruction's missing side effects are observable."""
    p = Program()
    p.load("act", 0, CFG.act_depth, CFG.rows, 0, CFG.rows)
    p.load("wgt", 0, CFG.wgt_depth, CFG.cols, 64, CFG.cols)
    p.load("param", 0, CFG.param_depth, PE, 128, PE)
    p.matmul(0, CFG.acc_depth, 0, 0, 0)
    return p


def _setup_memory() -> np.ndarray:
    rng = np.random.default_rng(3)
    mem = rng.integers(0, 256, 600, dtype=np.uint8)
    mem[512:600] = 0
    return mem


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_codes(make, case):
    word, code = ERROR_CASES[case]
    backend = make()
    golden = isinstance(backend, GoldenBackend)
    mem = _setup_memory()
    p = _setup_program()
    run_ok(backend, p.words + [isa.encode(Opcode.HALT)], mem)  # prime the buffers
    before = [b.copy() for b in (backend.act, backend.wgt, backend.param, backend.acc)] \
        if golden else None
    p.store(0, 2, 2, 560, 8, "raw")     # runs: instruction before the fault
    fault_at = len(p)
    p.emit(word)
    p.store(0, 1, 1, 580, 0, "raw")     # never runs
    p.halt()
    r = backend.run(p.words, mem, max_cycles=200_000)
    if golden:
        # run() started from zero buffers and re-ran the setup: same contents as primed.
        assert any(b.any() for b in before)
    assert r.status.done
    assert r.status.error == code, (case, r.status)
    assert r.status.fault_index == fault_at
    assert r.counters["instructions"] == fault_at
    assert r.memory[560:576].any()        # the STORE before the fault ran
    assert not r.memory[512:560].any()    # nothing at or after the fault wrote memory
    assert not r.memory[576:600].any()
    if golden:
        for b, old in zip((backend.act, backend.wgt, backend.param, backend.acc), before):
            np.testing.assert_array_equal(b, old)


@pytest.mark.parametrize("case", sorted(BOUNDARY_OK))
def test_boundaries_are_valid(make, case):
    backend = make()
    r = backend.run([BOUNDARY_OK[case], isa.encode(Opcode.HALT)], np.zeros(64, np.uint8),
                    max_cycles=100_000)
    assert r.status.ok, (case, r.status)
    assert r.counters["instructions"] == 2


def test_error_checks_agree_with_isa():
    # Every directed case is what isa.instruction_checks says (the one shared rule set).
    for case, (word, code) in ERROR_CASES.items():
        opcode, fields = isa.decode(word)
        try:
            op = Opcode(opcode)
        except ValueError:
            assert code == ErrorCode.BAD_OPCODE
            continue
        first = next((c_ for c_, bad in isa.instruction_checks(op, fields, CFG) if bad),
                     ErrorCode.NONE)
        assert first == code, case


def test_golden_argument_errors():
    g = GoldenBackend(CFG)
    with pytest.raises(TypeError, match="uint8"):
        g.run([], np.zeros(4, np.int8))
    with pytest.raises(ValueError, match="1-D"):
        g.run([], np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="mem_bytes"):
        g.run([], np.zeros(CFG.mem_bytes + 1, np.uint8))
    with pytest.raises(ValueError, match="128 bits"):
        g.run([1 << 128], np.zeros(4, np.uint8))
    with pytest.raises(TypeError, match="instruction word"):
        g.run(["HALT"], np.zeros(4, np.uint8))
    with pytest.raises(TypeError, match="config"):
        GoldenBackend("8x8")
    assert GoldenBackend().config == AcceleratorConfig()
    assert GoldenBackend.name == "golden"


# ---- random programs against an independent reference interpreter ---------------------------

def _wrap32(v: int) -> int:
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


class RefModel:
    """Literal, loop-by-loop reading of the ISA text."""

    def __init__(self, c: AcceleratorConfig):
        self.c = c
        self.act = [[0] * c.rows for _ in range(c.act_depth)]
        self.wgt = [[0] * c.cols for _ in range(c.wgt_depth)]
        self.param = [[0] * (12 * c.cols) for _ in range(c.param_depth)]
        self.acc = [[0] * c.cols for _ in range(c.acc_depth)]

    def _error(self, op, f) -> ErrorCode:
        c = self.c
        if op == Opcode.LOAD:
            entry = {0: c.rows, 1: c.cols, 2: 12 * c.cols}.get(f["target"])
            depth = {0: c.act_depth, 1: c.wgt_depth, 2: c.param_depth}.get(f["target"])
            if f["reserved0"] or f["reserved1"] or entry is None:
                return ErrorCode.BAD_FIELD
            if f["n_rows"] == 0 or f["row_bytes"] == 0 or f["row_bytes"] > entry:
                return ErrorCode.BAD_SIZE
            if f["buf_addr"] + f["n_rows"] > depth:
                return ErrorCode.BUF_RANGE
            if f["mem_addr"] + (f["n_rows"] - 1) * f["mem_stride"] + f["row_bytes"] > c.mem_bytes:
                return ErrorCode.MEM_RANGE
        elif op == Opcode.MATMUL:
            if f["reserved0"] or f["reserved1"]:
                return ErrorCode.BAD_FIELD
            if f["n_rows"] == 0:
                return ErrorCode.BAD_SIZE
            if (f["act_addr"] + f["n_rows"] > c.act_depth or f["wgt_addr"] + c.rows > c.wgt_depth
                    or f["acc_addr"] + f["n_rows"] > c.acc_depth):
                return ErrorCode.BUF_RANGE
        elif op == Opcode.STORE:
            if f["reserved0"] or f["mode"] > 1:
                return ErrorCode.BAD_FIELD
            if f["n_rows"] == 0 or f["n_cols"] == 0 or f["n_cols"] > c.cols:
                return ErrorCode.BAD_SIZE
            if f["acc_addr"] + f["n_rows"] > c.acc_depth or \
                    (f["mode"] == 0 and f["param_addr"] >= c.param_depth):
                return ErrorCode.BUF_RANGE
            length = f["n_cols"] * (4 if f["mode"] == 1 else 1)
            if f["mem_addr"] + (f["n_rows"] - 1) * f["mem_stride"] + length > c.mem_bytes:
                return ErrorCode.MEM_RANGE
        elif f["reserved0"]:
            return ErrorCode.BAD_FIELD
        return ErrorCode.NONE

    def run(self, words, image: bytes):
        mem = bytearray(image)

        def rd(a):
            return mem[a] if a < len(mem) else 0

        def wr(a, v):
            if a < len(mem):
                mem[a] = v & 0xFF

        def s8(b):
            return b - 256 if b >= 128 else b

        retired = 0
        for idx, word in enumerate(words):
            opcode, f = isa.decode(word)
            # (the vector opcodes exist only with the vector unit: docs/isa.md)
            if opcode not in [o.value for o in Opcode] or (
                    not self.c.vector and Opcode(opcode) in isa.VECTOR_OPCODES):
                return bytes(mem), (True, ErrorCode.BAD_OPCODE, idx), retired
            op = Opcode(opcode)
            err = self._error(op, f)
            if err != ErrorCode.NONE:
                return bytes(mem), (True, err, idx), retired
            retired += 1
            if op == Opcode.HALT:
                return bytes(mem), (True, ErrorCode.NONE, 0), retired
            if op == Opcode.LOAD:
                buf = [self.act, self.wgt, self.param][f["target"]]
                for i in range(f["n_rows"]):
                    entry = buf[f["buf_addr"] + i]
                    for j in range(len(entry)):
                        if j < f["row_bytes"]:
                            b = rd(f["mem_addr"] + i * f["mem_stride"] + j)
                            entry[j] = b if buf is self.param else s8(b)
                        else:
                            entry[j] = 0
            elif op == Opcode.MATMUL:
                for i in range(f["n_rows"]):
                    a = self.act[f["act_addr"] + i]
                    out = self.acc[f["acc_addr"] + i]
                    for n in range(self.c.cols):
                        s = sum(a[k] * self.wgt[f["wgt_addr"] + k][n] for k in range(self.c.rows))
                        out[n] = _wrap32((out[n] if f["accumulate"] else 0) + s)
            elif op == Opcode.STORE:
                for i in range(f["n_rows"]):
                    row = self.acc[f["acc_addr"] + i]
                    base = f["mem_addr"] + i * f["mem_stride"]
                    for n in range(f["n_cols"]):
                        if f["mode"] == 1:
                            for b in range(4):
                                wr(base + 4 * n + b, (row[n] & 0xFFFFFFFF) >> (8 * b))
                        else:
                            pb = bytes(self.param[f["param_addr"]][12 * n: 12 * n + 12])
                            bias = int.from_bytes(pb[0:4], "little", signed=True)
                            mult = int.from_bytes(pb[4:8], "little", signed=True)
                            shift = min(max(s8(pb[8]), -31), 30)
                            zp, lo, hi = s8(pb[9]), s8(pb[10]), s8(pb[11])
                            y = numerics.mbqm_reference(_wrap32(row[n] + bias), mult, shift)
                            y = min(max(_wrap32(y + zp), lo), hi)
                            wr(base + n, y)
        return bytes(mem), (False, ErrorCode.NONE, 0), retired


RCFG = AcceleratorConfig(rows=3, cols=2, act_depth=6, wgt_depth=6, acc_depth=5,
                         param_depth=2, mem_width=4, mem_bytes=128)


@st.composite
def _valid_instruction(draw):
    c = RCFG
    kind = draw(st.sampled_from(["load"] * 5 + ["matmul"] * 4 + ["store"] * 4 +
                                ["nop", "fence"]))
    if kind == "load":
        target = draw(st.integers(0, 2))
        entry = [c.rows, c.cols, 12 * c.cols][target]
        depth = [c.act_depth, c.wgt_depth, c.param_depth][target]
        buf_addr = draw(st.integers(0, depth - 1))
        n_rows = draw(st.integers(1, depth - buf_addr))
        row_bytes = draw(st.integers(1, entry))
        stride = draw(st.integers(0, (c.mem_bytes - row_bytes) // max(1, n_rows - 1)))
        mem_addr = draw(st.integers(0, c.mem_bytes - row_bytes - (n_rows - 1) * stride))
        return raw(Opcode.LOAD, target=target, buf_addr=buf_addr, n_rows=n_rows,
                   row_bytes=row_bytes, mem_addr=mem_addr, mem_stride=stride)
    if kind == "matmul":
        n_rows = draw(st.integers(1, c.acc_depth))
        return raw(Opcode.MATMUL, act_addr=draw(st.integers(0, c.act_depth - n_rows)),
                   n_rows=n_rows, wgt_addr=draw(st.integers(0, c.wgt_depth - c.rows)),
                   acc_addr=draw(st.integers(0, c.acc_depth - n_rows)),
                   accumulate=draw(st.integers(0, 1)))
    if kind == "store":
        mode = draw(st.integers(0, 1))
        n_rows = draw(st.integers(1, 4))
        n_cols = draw(st.integers(1, c.cols))
        length = n_cols * (4 if mode else 1)
        stride = draw(st.sampled_from([0, 1, length, length + 3, 9]))
        mem_addr = draw(st.integers(0, c.mem_bytes - length - (n_rows - 1) * stride))
        return raw(Opcode.STORE, mode=mode, acc_addr=draw(st.integers(0, c.acc_depth - n_rows)),
                   n_rows=n_rows, n_cols=n_cols,
                   param_addr=draw(st.integers(0, c.param_depth - 1 if mode == 0 else 9)),
                   mem_addr=mem_addr, mem_stride=stride)
    return raw({"nop": Opcode.NOP, "fence": Opcode.FENCE}[kind])


@st.composite
def _any_instruction(draw):
    c = RCFG
    kind = draw(st.sampled_from(["load", "matmul", "store", "control", "bad"]))
    if kind == "load":
        target = draw(st.sampled_from([0, 1, 2, 3]))
        entry = {0: c.rows, 1: c.cols, 2: 12 * c.cols, 3: 1}[target]
        return raw(Opcode.LOAD, target=target,
                   buf_addr=draw(st.integers(0, 7)), n_rows=draw(st.integers(0, 7)),
                   row_bytes=draw(st.integers(0, entry + 1)),
                   mem_addr=draw(st.integers(0, 140)), mem_stride=draw(st.integers(0, 70)),
                   reserved0=draw(st.sampled_from([0, 0, 1])),
                   reserved1=draw(st.sampled_from([0, 0, 0x80])))
    if kind == "matmul":
        return raw(Opcode.MATMUL, act_addr=draw(st.integers(0, 7)),
                   n_rows=draw(st.integers(0, 6)), wgt_addr=draw(st.integers(0, 5)),
                   acc_addr=draw(st.integers(0, 6)), accumulate=draw(st.integers(0, 1)),
                   reserved1=draw(st.sampled_from([0, 0, 1])))
    if kind == "store":
        return raw(Opcode.STORE, mode=draw(st.integers(0, 3)),
                   acc_addr=draw(st.integers(0, 6)), n_rows=draw(st.integers(0, 5)),
                   n_cols=draw(st.integers(0, 3)), param_addr=draw(st.integers(0, 3)),
                   mem_addr=draw(st.integers(0, 140)), mem_stride=draw(st.integers(0, 40)),
                   reserved0=draw(st.sampled_from([0, 0, 1])))
    if kind == "control":
        op = draw(st.sampled_from([Opcode.NOP, Opcode.FENCE, Opcode.HALT]))
        return raw(op, reserved0=draw(st.sampled_from([0, 0, 1 << 50])))
    return draw(st.integers(6, 255)) | (draw(st.integers(0, 3)) << 8)


# Mostly valid instructions (so that programs run long enough to do something), with an
# occasional arbitrary one that may fault.
@st.composite
def _random_instruction(draw):
    return draw(_any_instruction() if draw(st.integers(0, 15)) == 0 else _valid_instruction())


random_instruction = _random_instruction()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(random_instruction, min_size=1, max_size=16),
       image=st.binary(min_size=0, max_size=RCFG.mem_bytes),
       seed=st.integers(0, 2**32 - 1))
def test_random_programs_match_reference(words, image, seed):
    # Pre-fill both models' buffers with the same random contents (the model persists state).
    rng = np.random.default_rng(seed)
    g = GoldenBackend(RCFG)
    ref = RefModel(RCFG)
    g.act[:] = rng.integers(-128, 128, g.act.shape)
    g.wgt[:] = rng.integers(-128, 128, g.wgt.shape)
    g.param[:] = rng.integers(0, 256, g.param.shape)
    g.acc[:] = rng.integers(-(1 << 31), 1 << 31, g.acc.shape)
    ref.act = g.act.astype(int).tolist()
    ref.wgt = g.wgt.astype(int).tolist()
    ref.param = g.param.astype(int).tolist()
    ref.acc = g.acc.astype(int).tolist()
    mem = np.frombuffer(image, dtype=np.uint8).copy()
    r = g.execute(words, mem)
    ref_mem, (done, err, fault), retired = ref.run(words, image)
    assert (r.status.done, r.status.error, r.status.fault_index) == (done, err, fault)
    assert r.counters["instructions"] == retired
    assert r.memory.tobytes() == ref_mem
    assert g.act.tolist() == ref.act
    assert g.wgt.tolist() == ref.wgt
    assert g.param.tolist() == ref.param
    assert g.acc.tolist() == ref.acc
