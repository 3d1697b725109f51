"""Fuzzing the compiled model against the golden model, counted in instruction words.

Four kinds of program, in turn: valid random programs, the same with one faulting word,
random 128-bit words with mostly real opcodes, and runs of words whose ranges sit at the
edges of the buffers and of memory. Every program runs on the golden model and on the
compiled (Verilator) model under a cycle budget; the run must not hang, and status (error
code, fault index), memory and the retired-instruction count must agree. When the first word
faults, memory must be untouched. ``pytest -s`` prints the figures per kind.
"""

import collections

import numpy as np
import pytest

from serrano.hw.isa import ErrorCode, Opcode, encode
from serrano.sim.backend import SimulationTimeout
from serrano.sim.golden import GoldenBackend
from programs import (SMALL_CONFIGS, VECTOR_CONFIGS, boundary_words, garbage_program,
                      random_program)
from test_compiled import assert_identical, backend, needs_verilator

KINDS = ("valid", "malformed", "garbage", "edge")
# Generous for these small programs (the longest runs take a few thousand cycles): a run
# that needs more is a hang.
CYCLE_BUDGET = 200_000


def _program(kind: str, cfg, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
    if kind in ("valid", "malformed"):
        return random_program(cfg, rng, length=int(rng.integers(1, 16)),
                              malformed=kind == "malformed")
    memory = rng.integers(0, 256, cfg.mem_bytes, dtype=np.uint8)
    if kind == "garbage":
        return garbage_program(cfg, rng, int(rng.integers(1, 6))), memory
    return boundary_words(cfg, rng, int(rng.integers(1, 5))) + [encode(Opcode.HALT)], memory


def fuzz(cfg, n_words: int, seed: int) -> dict[str, collections.Counter]:
    """Run programs until ``n_words`` words were sent; returns per-kind counts of programs,
    words, faulting programs, hangs and the error codes seen (all checked on the way)."""
    rng = np.random.default_rng(seed)
    golden, compiled = GoldenBackend(cfg), backend(cfg)
    stats = {kind: collections.Counter() for kind in KINDS}
    sent = i = 0
    while sent < n_words:
        kind = KINDS[i % len(KINDS)]
        words, memory = _program(kind, cfg, rng)
        what = f"{kind} program {i} (seed {seed})"
        ref = golden.run(words, memory)
        try:
            got = compiled.run(words, memory, max_cycles=CYCLE_BUDGET)
        except SimulationTimeout:
            stats[kind]["hangs"] += 1
            raise AssertionError(f"{what} hung: no done within {CYCLE_BUDGET} cycles")
        assert_identical(got, ref, what, counters=False)
        assert {n: got.counters[n] for n in ref.counters} == ref.counters, what
        if ref.status.error != ErrorCode.NONE and ref.status.fault_index == 0:
            np.testing.assert_array_equal(got.memory, memory, err_msg=what)
        s = stats[kind]
        s["programs"] += 1
        s["words"] += len(words)
        s["cycles"] += got.counters["cycles"]
        s[f"error {ref.status.error.name}"] += 1
        sent += len(words)
        i += 1
    return stats


def _report(name: str, stats: dict[str, collections.Counter]) -> None:
    for kind, s in stats.items():
        errors = ", ".join(f"{k[6:]} {v}" for k, v in sorted(s.items()) if k.startswith("error"))
        print(f"{name} {kind:9s}: {s['programs']} programs, {s['words']} words, "
              f"{s['hangs']} hangs, {s['cycles']} cycles; {errors}")


def _check(name: str, n_words: int, seed: int) -> None:
    stats = fuzz({**SMALL_CONFIGS, **VECTOR_CONFIGS}[name], n_words, seed)
    _report(name, stats)
    total = sum(s["words"] for s in stats.values())
    assert total >= n_words
    assert all(s["hangs"] == 0 for s in stats.values())
    seen = {k for s in stats.values() for k in s if k.startswith("error ")}
    # Every error code was reached, and most programs of the valid kind ran to HALT.
    assert seen == {f"error {code.name}" for code in ErrorCode}, seen
    assert stats["valid"]["error NONE"] > stats["valid"]["programs"] // 2


@needs_verilator
@pytest.mark.parametrize("name", ["2x2_w4", "1x3_w1"])
def test_fuzz_compiled_against_golden(name):
    """10^4 words on each of two shapes in the default suite (a few seconds)."""
    _check(name, 10_000, seed=2026)


@needs_verilator
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_fuzz_compiled_against_golden_long(name):
    """10^5 words on each of four shapes (memory widths 1 to 16 bytes): 4 x 10^5."""
    _check(name, 100_000, seed=7)


@needs_verilator
def test_fuzz_compiled_against_golden_vector():
    """The vector ops (VREQUANT, VADD, VSOFTMAX, VLAYERNORM, VGELU, with random parameter
    bits) mixed into the random programs (2x2, 16-bit activations: the configuration
    test_vector.py's compiled test builds): 5 x 10^3 words."""
    stats = fuzz(VECTOR_CONFIGS["2x2_vec16"], 5_000, seed=13)
    _report("2x2_vec16", stats)
    assert stats["valid"]["error NONE"] > stats["valid"]["programs"] // 2


@needs_verilator
@pytest.mark.slow
def test_fuzz_compiled_against_golden_vector_long():
    _check("2x2_vec16", 100_000, seed=14)
