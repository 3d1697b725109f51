"""Memory fault injection (sim.backend.MemoryProfile): with requests refused and responses
delayed at random, both cycle-accurate backends still give the golden model's memory, status and
instruction count, and the same cycle count as each other.

The compiled models used here are those of tests/test_compiled.py's default suite (cached
under build/compiled); a profile is a run-time argument of the harness, not part of the model.
"""

import numpy as np
import pytest

from serrano.hw.isa import Opcode, encode
from serrano.sim.backend import (MAX_EXTRA_LATENCY, MemoryFaults, MemoryProfile, SplitMix64,
                                 check_mem_profile)
from serrano.sim.compiled import CompiledBackend
from serrano.sim.golden import GoldenBackend
from serrano.sim.pysim import PysimBackend
from serrano.sim.runtime import Accelerator
from programs import SMALL_CONFIGS, gemm_program, random_program
from simutil import needs_verilator


DEFAULT_CONFIGS = ("2x2_w4", "4x1_w16")  # the models tests/test_compiled.py builds by default
PROFILES = {
    "refuse0.3_extra5": MemoryProfile(seed=11, refuse=0.3, extra_latency=5),
    "refuse0.7": MemoryProfile(seed=12, refuse=0.7, extra_latency=0),
    "extra12": MemoryProfile(seed=13, refuse=0.0, extra_latency=12),
}
BUDGET = 200_000  # cycles per program: a hang fails in seconds on either backend

_compiled: dict = {}


def compiled(cfg, profile=None, **options) -> CompiledBackend:
    """One CompiledBackend per (config, profile, options) for the session."""
    key = (cfg, profile, tuple(sorted(options.items())))
    if key not in _compiled:
        _compiled[key] = CompiledBackend(cfg, mem_profile=profile, **options)
    return _compiled[key]


def assert_matches_golden(got, ref, what: str) -> None:
    assert got.status == ref.status, f"{what}: status {got.status} != {ref.status}"
    diff = np.flatnonzero(got.memory != ref.memory)
    assert diff.size == 0, f"{what}: {diff.size} memory bytes differ, first at {diff[:8]}"
    assert {n: got.counters[n] for n in ref.counters} == ref.counters, what


# ---- the profile and its generator ------------------------------------------------------------

@pytest.mark.parametrize("fields, match", [
    ({"seed": -1}, "seed"),
    ({"seed": 1 << 64}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"seed": True}, "seed"),
    ({"refuse": 1.0}, "refuse"),
    ({"refuse": -0.1}, "refuse"),
    ({"refuse": float("nan")}, "refuse"),
    ({"refuse": "0.5"}, "refuse"),
    ({"refuse": True}, "refuse"),
    ({"extra_latency": -1}, "extra_latency"),
    ({"extra_latency": MAX_EXTRA_LATENCY + 1}, "extra_latency"),
    ({"extra_latency": 2.0}, "extra_latency"),
])
def test_profile_rejects_bad_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        MemoryProfile(**fields)


def test_profile_is_frozen_keyword_only_and_checked_by_the_backends():
    p = MemoryProfile(seed=np.uint64(5), refuse=0, extra_latency=np.int64(3))
    assert (p.seed, p.refuse, p.extra_latency) == (5, 0.0, 3)
    assert type(p.seed) is int and type(p.refuse) is float
    with pytest.raises(TypeError):
        MemoryProfile(1, 0.5, 2)
    with pytest.raises(AttributeError):
        p.refuse = 0.5
    assert check_mem_profile(None) is None and check_mem_profile(p) is p
    with pytest.raises(TypeError, match="mem_profile"):
        PysimBackend(SMALL_CONFIGS["2x2_w4"], mem_profile={"refuse": 0.5})
    assert MemoryProfile(refuse=0.5).refuse_threshold == 1 << 52


def test_splitmix64_reference_values():
    # Vigna's splitmix64.c from state 0.
    rng = SplitMix64(0)
    assert [rng.next() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4,
                                              0x06C45D188009454F]


def test_faults_draw_the_documented_distribution():
    n = 20_000
    f = MemoryFaults(MemoryProfile(seed=3, refuse=0.3, extra_latency=5), latency=2)
    refused = sum(not f.ready() for _ in range(n)) / n
    assert 0.28 < refused < 0.32
    # Reads accepted every 10th cycle never queue behind one another: due - accepted - 2 is
    # the raw draw, uniform in 0..5.
    delays = [f.due(10 * c) - 10 * c - 2 for c in range(n)]
    assert set(delays) == set(range(6))
    # Back to back, the responses stay in order, one per cycle.
    due = [f.due(10 * n + c) for c in range(100)]
    assert all(b > a for a, b in zip(due, due[1:]))
    ideal = MemoryFaults(MemoryProfile(seed=3), latency=4)
    assert all(ideal.ready() for _ in range(100))
    assert [ideal.due(c) for c in range(5)] == [4, 5, 6, 7, 8]


@needs_verilator
def test_harness_generator_is_the_python_one():
    cfg = SMALL_CONFIGS["2x2_w4"]
    for seed in (0, 1, 0xDEADBEEF, (1 << 64) - 1):
        rng = SplitMix64(seed)
        assert compiled(cfg).harness_splitmix64(seed, 64) == [rng.next() for _ in range(64)]
    for profile in [*PROFILES.values(), MemoryProfile(seed=99, refuse=0.999, extra_latency=1)]:
        for latency in (1, 3):
            f = MemoryFaults(profile, latency)
            ready = [f.ready() for _ in range(500)]
            due = [f.due(c) for c in range(500)]
            assert compiled(cfg, profile, mem_latency=latency).harness_memory_faults(500) == (
                ready, due), (profile, latency)


# ---- backends under a profile -----------------------------------------------------------------

def _cases(configs):
    return [pytest.param(name, pname, id=f"{name}-{pname}")
            for name in configs for pname in PROFILES]


def _check_programs(name: str, pname: str, seeds, *, pysim: bool = True) -> None:
    cfg = SMALL_CONFIGS[name]
    profile = PROFILES[pname]
    for seed in seeds:
        words, memory = random_program(cfg, np.random.default_rng(seed),
                                       malformed=seed % 3 == 0)
        what = f"{name} seed {seed} {profile}"
        ref = GoldenBackend(cfg).run(words, memory)
        ideal = compiled(cfg).run(words, memory, max_cycles=BUDGET)
        got = compiled(cfg, profile).run(words, memory, max_cycles=BUDGET)
        assert_matches_golden(got, ref, f"compiled, {what}")
        assert got.counters["cycles"] >= ideal.counters["cycles"], what
        if pysim:
            sim = PysimBackend(cfg, mem_profile=profile).run(words, memory, max_cycles=BUDGET)
            assert_matches_golden(sim, ref, f"pysim, {what}")
            assert sim.counters == got.counters, f"{what}: pysim {sim.counters} != " \
                                                 f"compiled {got.counters}"


@needs_verilator
@pytest.mark.parametrize("name, pname", _cases(DEFAULT_CONFIGS))
def test_random_programs_under_a_profile(name, pname):
    _check_programs(name, pname, seeds=(300, 301))


@needs_verilator
@pytest.mark.parametrize("name, pname", _cases(DEFAULT_CONFIGS))
def test_random_programs_under_a_profile_compiled_only(name, pname):
    _check_programs(name, pname, seeds=range(400, 430), pysim=False)


@pytest.mark.slow
@needs_verilator
@pytest.mark.parametrize("name, pname", _cases(SMALL_CONFIGS))
def test_random_programs_under_a_profile_long(name, pname):
    _check_programs(name, pname, seeds=range(500, 512))


@needs_verilator
@pytest.mark.parametrize("backend", ["pysim", "compiled"])
def test_zero_profile_is_the_ideal_memory(backend):
    cfg = SMALL_CONFIGS["4x1_w16"]
    words, memory = random_program(cfg, np.random.default_rng(7))
    make = (lambda p: PysimBackend(cfg, mem_profile=p)) if backend == "pysim" else \
        (lambda p: compiled(cfg, p))
    ideal = make(None).run(words, memory, max_cycles=BUDGET)
    zero = make(MemoryProfile(seed=1234)).run(words, memory, max_cycles=BUDGET)
    assert zero.counters == ideal.counters and zero.status == ideal.status
    assert np.array_equal(zero.memory, ideal.memory)


@needs_verilator
def test_sequence_with_clear_under_a_profile_identical():
    cfg = SMALL_CONFIGS["2x2_w4"]
    profile = PROFILES["refuse0.3_extra5"]
    programs = [random_program(cfg, np.random.default_rng(s)) for s in (20, 21, 22)]
    sim = PysimBackend(cfg, mem_profile=profile).run_sequence(programs, max_cycles=BUDGET)
    got = compiled(cfg, profile).run_sequence(programs, max_cycles=BUDGET)
    for s, g in zip(sim, got):
        assert s.status == g.status and s.counters == g.counters
        assert np.array_equal(s.memory, g.memory)


@needs_verilator
def test_gemm_under_profiles_through_the_runtime():
    cfg = SMALL_CONFIGS["2x2_w4"]
    rng = np.random.default_rng(5)
    m = 6
    x = rng.integers(-128, 128, (m, cfg.rows), dtype=np.int8)
    w = rng.integers(-128, 128, (cfg.rows, cfg.cols), dtype=np.int8)
    memory = np.zeros(256, np.uint8)
    memory[0:x.size] = x.view(np.uint8).ravel()
    memory[64:64 + w.size] = w.view(np.uint8).ravel()
    words = gemm_program(cfg, 0, 64, 128, m, halt=True)
    want = x.astype(np.int32) @ w.astype(np.int32)
    cycles = {}
    for pname, profile in [("ideal", None), *PROFILES.items()]:
        for backend in ("pysim", "compiled"):
            acc = Accelerator(cfg, backend=backend, mem_profile=profile)
            r = acc.run_program(words, memory, max_cycles=BUDGET)
            assert r.status.ok, (pname, backend, r.status)
            y = r.memory[128:128 + 4 * want.size].view("<i4").reshape(want.shape)
            assert np.array_equal(y, want), (pname, backend)
            cycles[pname, backend] = r.counters["cycles"]
        assert cycles[pname, "pysim"] == cycles[pname, "compiled"], pname
        assert cycles[pname, "compiled"] >= cycles["ideal", "compiled"], pname


def test_golden_takes_no_profile():
    with pytest.raises(TypeError):
        Accelerator(SMALL_CONFIGS["2x2_w4"], backend="golden", mem_profile=MemoryProfile())


def test_simulate_command_flags(capsys):
    from serrano.commands import simulate
    argv = ["--rows", "2", "--cols", "2", "--m", "4", "--k", "2", "--n", "2"]
    assert simulate.main(argv + ["--backend", "golden", "--mem-refuse", "0.5"]) == 2
    assert "cycle-accurate" in capsys.readouterr().err
    assert simulate.main(argv + ["--backend", "pysim", "--mem-refuse", "1"]) == 2
    assert "refuse" in capsys.readouterr().err
    assert simulate.main(argv + ["--backend", "pysim", "--mem-refuse", "0.4",
                                 "--mem-extra-latency", "3", "--mem-seed", "9"]) == 0
    out = capsys.readouterr().out
    assert "memory : seed 9, refuse 0.4, extra latency 0..3" in out and "OK:" in out


def test_halt_only_program_under_a_profile_pysim():
    cfg = SMALL_CONFIGS["1x3_w1"]
    r = PysimBackend(cfg, mem_profile=PROFILES["refuse0.7"]).run(
        [encode(Opcode.HALT)], np.zeros(8, np.uint8), max_cycles=1000)
    assert r.status.ok
