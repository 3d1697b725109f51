"""The Accelerator runtime and its GEMM compiler, checked bit-exactly against numpy.

Runs on the golden backend by default; set ``SERRANO_TEST_BACKENDS=pysim`` (comma-separated)
to also run the small directed cases on cycle-accurate backends. Large and randomized cases
stay on the golden model (they exercise the compiler, which is backend-independent).
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import Opcode
from serrano.sim import Accelerator, Stats, numerics
from serrano.sim.asm import pack_output_params
from serrano.sim.runtime import build_program, pack_memory, plan_gemm, unpack_output

BACKENDS = ["golden"] + [b for b in os.environ.get("SERRANO_TEST_BACKENDS", "").split(",")
                         if b and b != "golden"]

C44 = AcceleratorConfig(rows=4, cols=4)
SMALL = AcceleratorConfig(rows=4, cols=3, act_depth=24, wgt_depth=8, acc_depth=10,
                          param_depth=2, mem_width=4, mem_bytes=1 << 16)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def rand_i8(rng, shape) -> np.ndarray:
    return rng.integers(-128, 128, shape, dtype=np.int8)


def ref_matmul(x, w) -> np.ndarray:
    return x.astype(np.int32) @ w.astype(np.int32)


def check_matmul(acc: Accelerator, M: int, K: int, N: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, w = rand_i8(rng, (M, K)), rand_i8(rng, (K, N))
    y = acc.matmul(x, w)
    assert y.dtype == np.int32 and y.shape == (M, N)
    np.testing.assert_array_equal(y, ref_matmul(x, w))
    return y


# ---- matmul: small directed cases on every backend -------------------------------------------

@pytest.mark.parametrize("cfg, shape", [
    (C44, (1, 1, 1)),
    (C44, (5, 7, 9)),
    (C44, (9, 4, 4)),
    (SMALL, (13, 9, 7)),        # rectangular array, partial K and N tiles, 2 chunks
    (AcceleratorConfig(rows=1, cols=5, act_depth=16, acc_depth=8, mem_width=2), (6, 3, 11)),
    (AcceleratorConfig(rows=5, cols=1, act_depth=16, acc_depth=8, mem_width=16), (6, 11, 3)),
], ids=["1x1x1", "partial", "exact", "rect", "1xN", "Nx1"])
def test_matmul_small(backend, cfg, shape):
    acc = Accelerator(cfg, backend=backend)
    check_matmul(acc, *shape, seed=sum(shape))
    assert acc.stats.macs == shape[0] * shape[1] * shape[2]


def test_matmul_extremes(backend):
    acc = Accelerator(SMALL, backend=backend)
    for fill_x, fill_w in ((-128, -128), (127, -128), (-128, 127), (127, 127)):
        x = np.full((5, 9), fill_x, np.int8)
        w = np.full((9, 4), fill_w, np.int8)
        np.testing.assert_array_equal(acc.matmul(x, w), ref_matmul(x, w))
    # alternating extremes
    x = np.where(np.indices((7, 6)).sum(0) % 2, -128, 127).astype(np.int8)
    w = np.where(np.indices((6, 5)).sum(0) % 3, 127, -128).astype(np.int8)
    np.testing.assert_array_equal(acc.matmul(x, w), ref_matmul(x, w))


def test_linear_small(backend):
    rng = np.random.default_rng(5)
    acc = Accelerator(SMALL, backend=backend)
    x, w = rand_i8(rng, (7, 9)), rand_i8(rng, (9, 5))
    bias = rng.integers(-5000, 5000, 5).astype(np.int32)
    mult = rng.integers(1 << 30, (1 << 31) - 1, 5).astype(np.int32)
    shift = np.array([-7, -8, -9, -10, -6])
    y = acc.linear(x, w, bias, multiplier=mult, shift=shift, zero_point=3, relu=True)
    ref = numerics.output_stage(ref_matmul(x, w), bias, mult, shift, 3, 3, 127)
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, ref)


# ---- matmul: larger and structural cases (golden) --------------------------------------------

def golden(cfg: AcceleratorConfig = C44) -> Accelerator:
    return Accelerator(cfg, backend="golden")


@pytest.mark.parametrize("shape", [(256, 64, 64), (1, 64, 64), (3, 200, 2), (64, 5, 130)])
def test_matmul_4x4_shapes(shape):
    check_matmul(golden(), *shape)


def test_matmul_default_config():
    acc = golden(AcceleratorConfig())
    check_matmul(acc, 33, 70, 19)
    assert acc.stats.cycles is None and acc.stats.utilization is None


def test_k_and_n_span_many_tiles():
    acc = golden(AcceleratorConfig(rows=2, cols=3, act_depth=256, acc_depth=64))
    check_matmul(acc, 10, 37, 41)
    assert acc.last_plan.kt == 19 and acc.last_plan.nt == 14


def test_m_larger_than_buffers_chunks():
    cfg = AcceleratorConfig(rows=4, cols=4, act_depth=32, acc_depth=16, mem_width=8)
    acc = golden(cfg)
    check_matmul(acc, 100, 12, 10)
    plan = acc.last_plan
    assert plan.mode == "resident" and plan.chunks > 1
    assert plan.mc * plan.acc_regions <= cfg.acc_depth
    assert (plan.mc, plan.chunks, plan.acc_regions, plan.store_group) == (8, 13, 2, 1)
    assert plan.mc * plan.kt <= cfg.act_depth


def test_k_larger_than_act_depth_streams():
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=4, acc_depth=8, mem_width=4)
    acc = golden(cfg)
    check_matmul(acc, 9, 21, 5)          # 11 k-tiles > 4 activation entries
    assert acc.last_plan.mode == "streaming"
    with pytest.raises(ValueError, match="resident"):
        plan_gemm(cfg, 9, 21, 5, mode="resident")


@pytest.mark.parametrize("cfg", [
    AcceleratorConfig(rows=3, cols=2, act_depth=8, wgt_depth=3, acc_depth=1, param_depth=1,
                      mem_width=1, mem_bytes=1 << 14),
    AcceleratorConfig(rows=2, cols=3, act_depth=1, wgt_depth=2, acc_depth=3, param_depth=1,
                      mem_width=64, mem_bytes=1 << 16),
    AcceleratorConfig(rows=6, cols=5, act_depth=40, wgt_depth=12, acc_depth=7, param_depth=2,
                      mem_width=8),
], ids=["acc1-wgt1-mw1", "act1-mw64", "odd"])
@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_both_schedules_minimal_buffers(cfg, mode):
    rng = np.random.default_rng(11)
    M, K, N = 7, 9, 11
    x, w = rand_i8(rng, (M, K)), rand_i8(rng, (K, N))
    try:
        plan = plan_gemm(cfg, M, K, N, mode=mode, requant=True)
    except ValueError:
        assert mode == "resident" and -(-K // cfg.rows) > cfg.act_depth
        return
    bias = rng.integers(-3000, 3000, N)
    mult = rng.integers(1 << 30, 1 << 31, N)
    shift = rng.integers(-12, -5, N)
    params = pack_output_params(bias, mult, shift, -2, -100, 90, cfg.cols)
    acc = golden(cfg)
    r = acc.run_program(build_program(plan), pack_memory(plan, x, w, params))
    assert r.status.ok
    np.testing.assert_array_equal(
        unpack_output(plan, r.memory),
        numerics.output_stage(ref_matmul(x, w), bias, mult, shift, -2, -100, 90))
    raw_plan = plan_gemm(cfg, M, K, N, mode=mode)
    r = acc.run_program(build_program(raw_plan), pack_memory(raw_plan, x, w))
    assert r.status.ok
    np.testing.assert_array_equal(unpack_output(raw_plan, r.memory), ref_matmul(x, w))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 8), act_depth=st.integers(1, 48),
       extra_tiles=st.integers(0, 3), acc_depth=st.integers(2, 40),
       param_depth=st.integers(1, 4), mw_log=st.integers(0, 4),
       M=st.integers(1, 20), K=st.integers(1, 20), N=st.integers(1, 20),
       seed=st.integers(0, 2**31), linear=st.booleans())
def test_random_configs_and_shapes(rows, cols, act_depth, extra_tiles, acc_depth,
                                   param_depth, mw_log, M, K, N, seed, linear):
    cfg = AcceleratorConfig(rows=rows, cols=cols, act_depth=act_depth,
                            wgt_depth=rows * (1 + extra_tiles) + seed % rows,
                            acc_depth=acc_depth, param_depth=param_depth,
                            mem_width=1 << mw_log, mem_bytes=1 << 16)
    rng = np.random.default_rng(seed)
    x, w = rand_i8(rng, (M, K)), rand_i8(rng, (K, N))
    acc = golden(cfg)
    if not linear:
        np.testing.assert_array_equal(acc.matmul(x, w), ref_matmul(x, w))
        return
    bias = rng.integers(-(1 << 20), 1 << 20, N).astype(np.int32)
    mult = rng.integers(0, 1 << 31, N)
    shift = rng.integers(-31, 8, N)
    zp = int(rng.integers(-128, 128))
    y = acc.linear(x, w, bias, multiplier=mult, shift=shift, zero_point=zp, relu=seed % 2 == 0)
    lo = zp if seed % 2 == 0 else -128
    np.testing.assert_array_equal(
        y, numerics.output_stage(ref_matmul(x, w), bias, mult, shift, zp, lo, 127))


# ---- linear -----------------------------------------------------------------------------------

def test_linear_scalar_and_per_column_params():
    rng = np.random.default_rng(9)
    acc = golden()
    x, w = rand_i8(rng, (20, 30)), rand_i8(rng, (30, 10))
    a = ref_matmul(x, w)
    m, s = numerics.quantize_multiplier(0.004)
    y = acc.linear(x, w, multiplier=m, shift=s)
    np.testing.assert_array_equal(y, numerics.output_stage(a, 0, m, s, 0))
    mults, shifts = numerics.quantize_multiplier(np.linspace(0.001, 0.01, 10))
    bias = np.arange(10, dtype=np.int32) * 1000 - 5000
    y = acc.linear(x, w, bias, multiplier=mults, shift=shifts, zero_point=-5, lo=-50, hi=60)
    np.testing.assert_array_equal(y, numerics.output_stage(a, bias, mults, shifts, -5, -50, 60))
    y = acc.linear(x, w, bias, multiplier=mults, shift=shifts, zero_point=-5, relu=True)
    assert y.min() >= -5
    np.testing.assert_array_equal(y, numerics.output_stage(a, bias, mults, shifts, -5, -5, 127))
    # per-column zero point with relu
    zps = np.arange(10) - 5
    y = acc.linear(x, w, bias, multiplier=mults, shift=shifts, zero_point=zps, relu=True)
    np.testing.assert_array_equal(y, numerics.output_stage(a, bias, mults, shifts, zps, zps, 127))


@pytest.mark.parametrize("param_depth", [1, 2])
def test_linear_many_n_tiles_streams_params(param_depth):
    # 5 n-tiles but only 1 or 2 parameter entries: parameters are reloaded per n-tile (and
    # n-tiles that accumulate at the same time need distinct entries).
    cfg = AcceleratorConfig(rows=4, cols=2, param_depth=param_depth, act_depth=64,
                            acc_depth=160)
    rng = np.random.default_rng(2)
    x, w = rand_i8(rng, (19, 6)), rand_i8(rng, (6, 9))
    acc = golden(cfg)
    mults, shifts = numerics.quantize_multiplier(rng.uniform(0.001, 0.02, 9))
    bias = rng.integers(-2000, 2000, 9)
    y = acc.linear(x, w, bias, multiplier=mults, shift=shifts, zero_point=1)
    assert not acc.last_plan.params_resident
    np.testing.assert_array_equal(
        y, numerics.output_stage(ref_matmul(x, w), bias, mults, shifts, 1))


# ---- the schedule -----------------------------------------------------------------------------

def _decoded(words):
    return [(Opcode(isa.decode(wd)[0]), isa.decode(wd)[1]) for wd in words]


def test_schedule_4x4_target_shape():
    plan = plan_gemm(C44, 256, 64, 64)
    assert (plan.mode, plan.mc, plan.chunks, plan.kt, plan.nt) == ("resident", 128, 2, 16, 16)
    ins = _decoded(build_program(plan))
    ops = [op for op, _ in ins]
    assert ops[-1] == Opcode.HALT and Opcode.FENCE not in ops
    loads = [f for op, f in ins if op == Opcode.LOAD]
    act_loads = [f for f in loads if f["target"] == 0]
    wgt_loads = [f for f in loads if f["target"] == 1]
    matmuls = [f for op, f in ins if op == Opcode.MATMUL]
    stores = [f for op, f in ins if op == Opcode.STORE]
    assert len(act_loads) == 2 * 16                # each activation k-tile loaded once
    assert len(wgt_loads) == len(matmuls) == 2 * 16 * 16
    assert all(m["n_rows"] == 128 >= 2 * C44.rows for m in matmuls)
    assert len(stores) == 2 * 16 and all(s["n_rows"] == 128 for s in stores)
    # 8 accumulator regions of 128 rows; 32 n-tiles in STORE groups of 3, 4 x 7 and 1,
    # groups alternating between the two halves of the regions
    assert (plan.acc_regions, plan.store_group) == (8, 4)
    starts = [m["acc_addr"] for m in matmuls if not m["accumulate"]]   # one per n-tile
    assert starts[:8] == [0, 128, 256, 512, 640, 768, 896, 0]
    assert starts[-1] == 0
    # each chunk's first n-tiles run k-outer, sharing every activation k-tile load
    lead = 2
    assert [m["acc_addr"] for m in matmuls[:4]] == [0, 128, 0, 128]
    assert [m["act_addr"] for m in matmuls[:4]] == [0, 0, 128, 128]
    assert ops[:6] == [Opcode.LOAD, Opcode.LOAD, Opcode.MATMUL, Opcode.LOAD, Opcode.MATMUL,
                       Opcode.LOAD]
    assert all(m["act_addr"] == (i // lead) * 128 for i, m in enumerate(matmuls[:16 * lead]))
    assert len({s["acc_addr"] for s in stores}) == 8
    # rows of x and weight tiles are word-aligned in memory
    assert all(f["mem_addr"] % 4 == 0 and f["mem_stride"] % C44.mem_width == 0
               for f in act_loads)
    assert all(f["mem_addr"] % C44.mem_width == 0 for f in wgt_loads)
    # no STORE before the first n-tiles are complete; each STORE precedes a MATMUL
    first_store = ops.index(Opcode.STORE)
    assert ops[:first_store].count(Opcode.MATMUL) >= 2 * 16 - 1   # after n-tile 0 completes
    assert ops[first_store + 1] == Opcode.MATMUL
    # stores of a group are spread out: never two STOREs in a row before the tail
    body = ops[:len(ops) - 4]
    assert all(not (a == b == Opcode.STORE) for a, b in zip(body, body[1:]))
    # activation k-tile k is loaded just before its first MATMUL
    assert ops[:3] == [Opcode.LOAD, Opcode.LOAD, Opcode.MATMUL]
    assert plan.est_cycles < 1.1 * plan.ideal_cycles


def test_schedule_is_sequentially_correct_without_stores_reordered_into_conflicts():
    # With a single accumulator region the deferred STORE must come before the next
    # MATMUL that overwrites it (checked end to end by the golden model elsewhere; here the
    # order itself).
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=16, acc_depth=1)
    plan = plan_gemm(cfg, 1, 4, 6)
    assert plan.acc_regions == 1
    ins = _decoded(build_program(plan))
    pending = False
    for op, f in ins:
        if op == Opcode.MATMUL and not f["accumulate"]:
            assert not pending
        if op == Opcode.MATMUL and f["accumulate"]:
            pending = True
        if op == Opcode.STORE:
            pending = False


# ---- run_program and stats --------------------------------------------------------------------

def test_run_program_and_stats(backend):
    acc = Accelerator(SMALL, backend=backend)
    words = [isa.encode(Opcode.NOP), isa.encode(Opcode.HALT)]
    r = acc.run_program(words, np.zeros(32, np.uint8))
    assert r.status.ok and r.counters["instructions"] == 2
    assert isinstance(acc.stats, Stats)
    assert acc.stats.instructions == 2 and acc.stats.macs is None
    if backend == "golden":
        assert acc.stats.cycles is None and acc.stats.utilization is None
        # the counters that do not depend on time (array_busy and the activity counters: a
        # NOP and a HALT touch no buffer)
        assert acc.stats.counters == {"instructions": 2, "array_busy": 0,
                                      **dict.fromkeys(isa.ACTIVITY_COUNTERS, 0)}
    else:
        assert acc.stats.cycles > 0
        assert acc.stats.utilization == acc.stats.array_busy / acc.stats.cycles
    # faults are reported, not raised
    r = acc.run_program([0xEE], np.zeros(8, np.uint8))
    assert r.status.done and r.status.error == isa.ErrorCode.BAD_OPCODE


def test_stats_after_matmul():
    acc = golden()
    check_matmul(acc, 8, 8, 8)
    s = acc.stats
    assert s.macs == 512 and s.ideal_cycles == 512 / 16
    assert s["macs"] == 512 and s.as_dict()["ideal_cycles"] == 32
    assert s.instructions == len(acc.last_program)
    assert s.backend == "golden"
    for name in ("cycles", "array_busy", "dispatch_stall", "load_stall", "exec_stall",
                 "store_stall", "instructions"):
        assert name in s.as_dict()


def test_stats_utilization_from_counters():
    s = Stats.from_counters("x", {"cycles": 200, "array_busy": 150, "instructions": 3},
                            macs=1600, ideal_cycles=100.0)
    assert s.utilization == 0.5 and s.array_busy == 150
    s = Stats.from_counters("x", {"cycles": 200, "array_busy": 150}, None, None)
    assert s.utilization == 0.75


# ---- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("x, w, exc, match", [
    (np.zeros((2, 3), np.int16), np.zeros((3, 2), np.int8), TypeError, "x must have dtype int8"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.uint8), TypeError, "w must have dtype int8"),
    ([[1, 2]], np.zeros((2, 2), np.int8), TypeError, "x must be a numpy int8 array"),
    (np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), ValueError, "shape mismatch"),
    (np.zeros(3, np.int8), np.zeros((3, 2), np.int8), ValueError, "x must be 2-D"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2, 1), np.int8), ValueError, "w must be 2-D"),
    (np.zeros((0, 3), np.int8), np.zeros((3, 2), np.int8), ValueError, "x must not be empty"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 0), np.int8), ValueError, "w must not be empty"),
])
def test_matmul_argument_errors(x, w, exc, match):
    acc = golden()
    with pytest.raises(exc, match=match):
        acc.matmul(x, w)
    with pytest.raises(exc, match=match):
        acc.linear(x, w, multiplier=1 << 30, shift=0)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(bias=np.zeros(3)), TypeError, "bias"),
    (dict(bias=np.zeros(4, np.int32)), ValueError, "bias"),
    (dict(bias=np.array([1 << 31, 0, 0], np.int64)), ValueError, "bias"),
    (dict(multiplier=0.5), TypeError, "multiplier"),
    (dict(multiplier=np.array([1 << 31] * 3)), ValueError, "multiplier"),
    (dict(shift=31), ValueError, "shift"),
    (dict(shift=-32), ValueError, "shift"),
    (dict(shift=np.array([0, 0])), ValueError, "shift"),
    (dict(zero_point=128), ValueError, "zero_point"),
    (dict(zero_point=-129), ValueError, "zero_point"),
    (dict(lo=10, hi=5), ValueError, "lo <= hi"),
    (dict(zero_point=50, hi=20, relu=True), ValueError, "relu"),
    (dict(relu="yes"), TypeError, "relu"),
    (dict(bias=True), TypeError, "bias"),
])
def test_linear_argument_errors(kwargs, exc, match):
    acc = golden()
    args = dict(multiplier=1 << 30, shift=-1)
    args.update(kwargs)
    x, w = np.zeros((2, 3), np.int8), np.zeros((3, 3), np.int8)
    with pytest.raises(exc, match=match):
        acc.linear(x, w, **args)


def test_linear_requires_scale():
    with pytest.raises(TypeError, match="multiplier"):
        golden().linear(np.zeros((1, 1), np.int8), np.zeros((1, 1), np.int8), shift=0)


def test_problem_too_big_for_memory():
    cfg = AcceleratorConfig(rows=4, cols=4, mem_bytes=4096)
    acc = golden(cfg)
    with pytest.raises(ValueError, match="mem_bytes=4096"):
        acc.matmul(np.zeros((64, 64), np.int8), np.zeros((64, 8), np.int8))


def test_run_program_argument_errors():
    acc = golden(SMALL)
    with pytest.raises(ValueError, match="larger than mem_bytes"):
        acc.run_program([], np.zeros(SMALL.mem_bytes + 1, np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        acc.run_program([], np.zeros(4, np.int8))
    with pytest.raises(ValueError, match="1-D"):
        acc.run_program([], np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="128 bits"):
        acc.run_program([1 << 128], np.zeros(4, np.uint8))
    with pytest.raises(TypeError, match="instruction word 1"):
        acc.run_program([0, 1.5], np.zeros(4, np.uint8))


def test_backend_selection():
    with pytest.raises(ValueError, match="golden, pysim, compiled"):
        Accelerator(C44, backend="verilog")
    with pytest.raises(TypeError, match="config"):
        Accelerator({"rows": 4}, backend="golden")
    with pytest.raises(TypeError, match="no options"):
        Accelerator(C44, backend="golden", trace=True)
    from serrano.sim.golden import GoldenBackend
    acc = Accelerator(C44, backend=GoldenBackend(C44))
    assert acc.backend_name == "golden"
    check_matmul(acc, 3, 3, 3)


# ---- the performance target on the cycle-accurate model (slow) --------------------------------

@pytest.mark.slow
def test_target_shape_on_pysim():
    """M=256, K=64, N=64 on a 4x4 array, every load and store included: bit-exact, and the
    cycle count (deterministic) keeps utilization >= 90 %; the MAC-busy counter equals the
    ideal cycle count (performance.md)."""
    acc = Accelerator(C44, backend="pysim")
    check_matmul(acc, 256, 64, 64)
    s = acc.stats
    print(f"4x4 256x64x64 on pysim: {s.cycles} cycles, utilization {100 * s.utilization:.1f} %")
    assert s.array_busy == s.ideal_cycles == 65536
    assert s.utilization >= 0.90


# ---- scripts (golden backend: they exercise the plumbing, not the timing) ---------------------

def _script(name: str):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simulate_script(capsys, monkeypatch):
    simulate = _script("simulate")
    args = ["--rows", "3", "--cols", "5", "--m", "7", "--k", "11", "--n", "13",
            "--backend", "golden"]
    assert simulate.main(args) == 0
    assert "matches numpy" in capsys.readouterr().out
    assert simulate.main(["--m", "0", "--backend", "golden"]) == 2
    # a wrong result is reported and fails the run
    real = Accelerator.matmul
    monkeypatch.setattr(Accelerator, "matmul", lambda self, x, w: real(self, x, w) + 1)
    assert simulate.main(args) == 1
    assert "MISMATCH" in capsys.readouterr().err


def test_benchmark_script_quick(capsys):
    assert _script("benchmark").main(["--quick", "--backend", "golden"]) == 0
    out = capsys.readouterr().out
    assert out.count(" OK ") == 3 and "FAIL" not in out


def test_demo_script_golden(capsys, monkeypatch):
    demo = _script("demo")
    assert demo.main(["--skip-verilog", "--backend", "golden"]) == 0
    out = capsys.readouterr().out
    assert out.count("bit-exact vs numpy integer reference: OK") == 2 and "PASSED" in out
    real = Accelerator.linear
    monkeypatch.setattr(Accelerator, "linear",
                        lambda self, *a, **k: np.negative(real(self, *a, **k)))
    assert demo.main(["--skip-verilog", "--backend", "golden"]) == 1


def test_demo_large_gemm_step_on_the_compiled_backend(capsys, monkeypatch):
    pytest.importorskip("sim.compiled")
    demo = _script("demo")
    args = ["--skip-verilog", "--backend", "compiled", "--rows", "2", "--cols", "2",
            "--batch", "4", "--gemm", "16"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "[GEMM 16x16x16]" in out and "bit-exact vs numpy: OK" in out
    real = Accelerator.matmul
    monkeypatch.setattr(Accelerator, "matmul",
                        lambda self, *a, **k: real(self, *a, **k) + 1)
    assert demo.main(args) == 1
    assert "bit-exact vs numpy: MISMATCH" in capsys.readouterr().out
