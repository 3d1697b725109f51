"""16-bit activations (``AcceleratorConfig(act_bits=16)``): int16 activations against int8
weights, bit-exact on the golden model, pysim and the compiled model.

The array's partial sums are ``psum_width = 24 + clog2(rows)`` bits, so no tile overflows;
accumulation across tiles wraps in int32 as with 8-bit activations (docs/numerics.md).
"""

import numpy as np
import pytest

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, LoadTarget, Opcode, StoreMode, encode
from serrano.sim.golden import GoldenBackend
from serrano.sim.pysim import PysimBackend
from serrano.sim.runtime import Accelerator
from programs import random_program
from test_compiled import assert_identical, backend, needs_verilator

A_MIN, A_MAX = -(1 << 15), (1 << 15) - 1

# Non-square arrays, several memory widths; small buffers so that random programs collide.
CFG_2x3 = AcceleratorConfig(rows=2, cols=3, act_depth=16, wgt_depth=4, acc_depth=16,
                            param_depth=2, mem_width=4, mem_bytes=1024, act_bits=16)
CFG_4x2 = AcceleratorConfig(rows=4, cols=2, act_depth=64, acc_depth=64, param_depth=4,
                            mem_width=8, mem_bytes=1 << 14, act_bits=16)
CONFIGS = {"2x3": CFG_2x3, "4x2": CFG_4x2}


def _ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32)


# ---- configuration --------------------------------------------------------------------------

def test_config_act_bits_field_and_derived_sizes():
    default = AcceleratorConfig()
    assert default.act_bits == 8 and default.act_bytes == 1
    assert default.act_entry_bytes == default.rows and default.psum_width == 16 + 3
    assert "activations" not in default.describe()
    c = AcceleratorConfig(rows=8, cols=4, act_bits=16)
    assert c.act_bytes == 2 and c.act_entry_bytes == 16 and c.psum_width == 16 + 8 + 3
    assert c.describe().endswith(", 16-bit activations") and "act 2048 x 16 B" in c.describe()
    assert AcceleratorConfig(rows=128, act_bits=16).psum_width == 31  # fits the int32 adds
    assert AcceleratorConfig(rows=8, cols=2, act_bits=16).max_entry_bytes == 24  # params
    for bad in (12, 0, 32, True, "16", 16.0, None):
        with pytest.raises(ValueError, match="act_bits must be one of"):
            AcceleratorConfig(act_bits=bad)


# ---- ISA: whole int16 elements per LOAD row --------------------------------------------------

def _first_error(opcode, fields, cfg):
    word = encode(opcode, **fields)
    _, decoded = isa.decode(word)
    for code, failed in isa.instruction_checks(opcode, decoded, cfg):
        if failed:
            return code
    return ErrorCode.NONE


@pytest.mark.parametrize("row_bytes,target,act_bits,want", [
    (3, LoadTarget.ACT, 16, ErrorCode.BAD_SIZE),   # half an element
    (1, LoadTarget.ACT, 16, ErrorCode.BAD_SIZE),
    (2, LoadTarget.ACT, 16, ErrorCode.NONE),
    (8, LoadTarget.ACT, 16, ErrorCode.NONE),       # the whole entry: rows * 2 bytes
    (9, LoadTarget.ACT, 16, ErrorCode.BAD_SIZE),   # larger than the entry
    (10, LoadTarget.ACT, 16, ErrorCode.BAD_SIZE),
    (3, LoadTarget.WGT, 16, ErrorCode.BAD_SIZE),   # cols = 2: larger than the entry
    (1, LoadTarget.WGT, 16, ErrorCode.NONE),       # odd sizes stay fine elsewhere
    (3, LoadTarget.ACT, 8, ErrorCode.NONE),
    (5, LoadTarget.ACT, 8, ErrorCode.BAD_SIZE),
])
def test_load_act_row_bytes_rule(row_bytes, target, act_bits, want):
    cfg = AcceleratorConfig(rows=4, cols=2, act_depth=16, act_bits=act_bits, mem_bytes=1024)
    assert _first_error(Opcode.LOAD, dict(target=target.value, n_rows=1, row_bytes=row_bytes),
                        cfg) == want


def _odd_load_program(cfg):
    """A valid LOAD + MATMUL + STORE, then a LOAD ACT with an odd row_bytes (faults)."""
    words = [
        encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=2,
               row_bytes=cfg.act_entry_bytes, mem_addr=0, mem_stride=cfg.act_entry_bytes),
        encode(Opcode.LOAD, target=LoadTarget.WGT.value, n_rows=cfg.rows, row_bytes=cfg.cols,
               mem_addr=64, mem_stride=cfg.cols),
        encode(Opcode.MATMUL, n_rows=2),
        encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=2, n_cols=cfg.cols,
               mem_addr=256, mem_stride=4 * cfg.cols),
        encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=1, row_bytes=3),
        encode(Opcode.HALT),
    ]
    memory = np.random.default_rng(3).integers(0, 256, 512, dtype=np.uint8)
    return words, memory


def test_odd_act_row_bytes_fault_on_golden_and_pysim():
    words, memory = _odd_load_program(CFG_2x3)
    ref = GoldenBackend(CFG_2x3).run(words, memory)
    assert ref.status.done and ref.status.error == ErrorCode.BAD_SIZE
    assert ref.status.fault_index == 4
    got = PysimBackend(CFG_2x3).run(words, memory, max_cycles=20_000)
    assert got.status == ref.status
    np.testing.assert_array_equal(got.memory, ref.memory)


# ---- GEMMs through the runtime ---------------------------------------------------------------

def _cases(cfg, rng):
    """(name, x, w): corners (extreme activations against extreme weights, K over several
    k-tiles with accumulation, a single row), partial tiles and random data."""
    k3 = 3 * cfg.rows                                   # three k-tiles: accumulate twice
    cases = []
    for a, b in ((A_MIN, -128), (A_MAX, 127), (A_MIN, 127), (A_MAX, -128)):
        cases.append((f"corner {a}x{b}", np.full((3, k3), a, np.int16),
                      np.full((k3, cfg.cols + 1), b, np.int8)))
    mixed = np.where(rng.random((5, k3 + 1)) < 0.5, A_MIN, A_MAX).astype(np.int16)
    cases.append(("mixed corners", mixed,
                  np.where(rng.random((k3 + 1, 2 * cfg.cols)) < 0.5, -128, 127).astype(np.int8)))
    cases.append(("one row", rng.integers(A_MIN, A_MAX + 1, (1, k3 - 1)).astype(np.int16),
                  rng.integers(-128, 128, (k3 - 1, cfg.cols)).astype(np.int8)))
    cases.append(("random", rng.integers(A_MIN, A_MAX + 1, (7, 2 * cfg.rows + 1)).astype(np.int16),
                  rng.integers(-128, 128, (2 * cfg.rows + 1, 2 * cfg.cols + 1)).astype(np.int8)))
    return cases


@pytest.mark.parametrize("name", CONFIGS)
def test_gemm_bit_exact_golden_and_pysim(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(16)
    golden, pysim = Accelerator(cfg, "golden"), Accelerator(cfg, "pysim")
    for what, x, w in _cases(cfg, rng):
        want = _ref(x, w)
        np.testing.assert_array_equal(golden.matmul(x, w), want, err_msg=f"golden {what}")
        np.testing.assert_array_equal(pysim.matmul(x, w), want, err_msg=f"pysim {what}")


@needs_verilator
@pytest.mark.parametrize("name", CONFIGS)
def test_gemm_bit_exact_compiled(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(16)
    compiled = Accelerator(cfg, backend(cfg))
    for what, x, w in _cases(cfg, rng):
        np.testing.assert_array_equal(compiled.matmul(x, w), _ref(x, w),
                                      err_msg=f"compiled {what}")


def test_int32_wraparound_beyond_the_no_overflow_bound():
    """K = 1024 products of -32768 * -128 = 2**22 sum to 2**32: wraps to 0 in int32, exactly
    as the accumulators do (the bound K <= 511 of docs/numerics.md is where it can start)."""
    cfg = AcceleratorConfig(rows=8, cols=2, act_bits=16)
    x = np.full((1, 1024), A_MIN, np.int16)
    w = np.full((1024, 2), -128, np.int8)
    np.testing.assert_array_equal(Accelerator(cfg, "golden").matmul(x, w), [[0, 0]])
    x511 = np.full((1, 511), A_MIN, np.int16)
    got = Accelerator(cfg, "golden").matmul(x511, w[:511])
    assert int(got[0, 0]) == 511 << 22  # still exact


def test_linear_with_16_bit_activations():
    cfg = CFG_4x2
    rng = np.random.default_rng(5)
    x = rng.integers(A_MIN, A_MAX + 1, (3, 9)).astype(np.int16)
    w = rng.integers(-128, 128, (9, 3)).astype(np.int8)
    kwargs = dict(bias=[5, -7, 1 << 20], multiplier=1 << 30, shift=-12, zero_point=3)
    ref = Accelerator(cfg, "golden").linear(x, w, **kwargs)
    np.testing.assert_array_equal(Accelerator(cfg, "pysim").linear(x, w, **kwargs), ref)
    from serrano.sim.numerics import output_stage
    want = output_stage(_ref(x, w), np.array([5, -7, 1 << 20]), np.full(3, 1 << 30),
                        np.full(3, -12), np.full(3, 3), np.full(3, -128), np.full(3, 127))
    np.testing.assert_array_equal(ref, want)


def test_runtime_checks_activations():
    acc = Accelerator(CFG_4x2, "golden")
    w = np.ones((3, 2), np.int8)
    # any integer dtype with int16 values; int8 and int64 arrays give the same product
    x = np.array([[A_MIN, -1, A_MAX]], np.int64)
    np.testing.assert_array_equal(acc.matmul(x, w), _ref(x, w))
    np.testing.assert_array_equal(acc.matmul(x.astype(np.int8) * 0 + 7, w), [[21, 21]])
    with pytest.raises(ValueError, match=r"x must be in \[-32768, 32767\] for 16-bit "
                                         r"activations; found 32768"):
        acc.matmul(np.array([[0, 32768, 1]], np.int32), w)
    with pytest.raises(ValueError, match="x must be in .* found -32769"):
        acc.matmul(np.array([[0, -32769, 1]]), w)
    with pytest.raises(TypeError, match="x must be a numpy integer array"):
        acc.matmul(np.zeros((1, 3)), w)
    with pytest.raises(TypeError, match="w must have dtype int8"):
        acc.matmul(np.zeros((1, 3), np.int16), w.astype(np.int16))
    with pytest.raises(TypeError, match="x must have dtype int8"):  # 8-bit mode: unchanged
        Accelerator(AcceleratorConfig(rows=4, cols=2), "golden").matmul(
            np.zeros((1, 3), np.int16), w)


def test_runtime_lays_activations_out_two_bytes_per_element():
    acc = Accelerator(CFG_4x2, "golden")
    x = np.array([[0x1234, -2, 0x7F01, -32768, 5]], np.int16)
    acc.matmul(x, np.ones((5, 2), np.int8))
    load = next(w for w in acc.last_program
                if isa.decode(w)[0] == Opcode.LOAD.value
                and isa.decode(w)[1]["target"] == LoadTarget.ACT.value)
    assert isa.decode(load)[1]["row_bytes"] == 2 * CFG_4x2.rows
    plan = acc.last_plan
    assert plan.a_pitch == 8  # 4 int16 per k-tile: 8 bytes, one memory word
    from serrano.sim.runtime import pack_memory
    mem = pack_memory(plan, x, np.ones((5, 2), np.int8))
    assert mem[:16].tolist() == [0x34, 0x12, 0xFE, 0xFF, 0x01, 0x7F, 0x00, 0x80,
                                 0x05, 0x00, 0, 0, 0, 0, 0, 0]


# ---- random programs -------------------------------------------------------------------------

def _random_programs(cfg, seed, n):
    rng = np.random.default_rng(seed)
    return [random_program(cfg, rng, length=int(rng.integers(1, 14)), malformed=i % 3 == 0)
            for i in range(n)]


def test_random_programs_golden_vs_pysim():
    for i, (words, memory) in enumerate(_random_programs(CFG_2x3, 160, 12)):
        ref = GoldenBackend(CFG_2x3).run(words, memory)
        got = PysimBackend(CFG_2x3).run(words, memory, max_cycles=100_000)
        assert_identical(got, ref, f"program {i}", counters=False)


@needs_verilator
@pytest.mark.parametrize("name", CONFIGS)
def test_random_programs_golden_vs_compiled(name):
    cfg = CONFIGS[name]
    compiled, golden = backend(cfg), GoldenBackend(cfg)
    faults = 0
    for i, (words, memory) in enumerate(_random_programs(cfg, 161, 60)):
        ref = golden.run(words, memory)
        got = compiled.run(words, memory, max_cycles=200_000)
        assert_identical(got, ref, f"{name} program {i}", counters=False)
        faults += ref.status.error != ErrorCode.NONE
    assert 0 < faults < 60
    words, memory = _odd_load_program(cfg)
    ref = golden.run(words, memory)
    assert ref.status.error == ErrorCode.BAD_SIZE
    assert_identical(compiled.run(words, memory, max_cycles=20_000), ref, "odd row_bytes",
                     counters=False)
