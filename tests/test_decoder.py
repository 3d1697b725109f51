"""The decoder alone: its multi-cycle range checks against ``isa.instruction_checks``.

Every word is checked on its own (``clear`` between words), with units that are always ready
and idle, so the decoder's verdict and the command it dispatches can be compared word by
word with the rules the golden model runs. Fields are drawn around the boundaries that the
pipelined memory-extent computation could get wrong: products that carry across the 17-bit
split of the stride, ends at exactly ``mem_bytes`` and one past it, huge strides, row counts
of 0 and 1.
"""

import numpy as np
import pytest
from amaranth import Module, ResetInserter
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.decoder import Decoder
from serrano.hw.isa import ErrorCode, Opcode, encode
from serrano.hw.mult import MultiplierTarget
from programs import boundary_words
from simutil import simulate

CFG = AcceleratorConfig(rows=2, cols=3, act_depth=16, wgt_depth=4, acc_depth=8, param_depth=4,
                        mem_width=4, mem_bytes=1 << 12)


class _Dut(wiring.Component):
    """The decoder behind a synchronous ``clear`` (as the top level applies it)."""
    clear: In(1)
    instr: In(stream.Signature(isa.INSTR_WIDTH))
    status: Out(isa.Status)
    counters: Out(isa.Counters)

    def __init__(self, config, target=None):
        self.decoder = Decoder(config, target, assertions=True)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = ResetInserter(self.clear)(self.decoder)
        dec = self.decoder
        wiring.connect(m, wiring.flipped(self.instr), dec.instr)
        # The units' side (cmd.ready, busy, footprints) is left to the testbench.
        m.d.comb += [self.status.eq(dec.status), self.counters.eq(dec.counters)]
        return m


def expected_error(word: int, cfg: AcceleratorConfig) -> ErrorCode:
    opcode, fields = isa.decode(word)
    try:
        op = Opcode(opcode)
    except ValueError:
        return ErrorCode.BAD_OPCODE
    return next((code for code, bad in isa.instruction_checks(op, fields, cfg) if bad),
                ErrorCode.NONE)


def run_words(cfg: AcceleratorConfig, words: list[int], target=None) -> list[tuple]:
    """Each word on a freshly cleared decoder, followed by HALT: ``(status, dispatched)``
    where ``dispatched`` is ``(unit, payload)`` of every command that left the decoder."""
    dut = _Dut(cfg, target)
    dec = dut.decoder
    results = []
    budget = 40 * (len(words) + 1) * (dec.check_cycles + 4)

    async def bench(ctx):
        for port in (dec.load_cmd, dec.exec_cmd, dec.store_cmd):
            ctx.set(port.ready, 1)
        for word in words:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            sent, dispatched = 0, []
            for _ in range(8 * (dec.check_cycles + 4)):
                queue = [word, encode(Opcode.HALT)]
                ctx.set(dut.instr.valid, sent < len(queue))
                if sent < len(queue):
                    ctx.set(dut.instr.payload, queue[sent])
                for unit, port in (("load", dec.load_cmd), ("exec", dec.exec_cmd),
                                   ("store", dec.store_cmd)):
                    if ctx.get(port.valid):
                        dispatched.append((unit, ctx.get(port.payload)))
                ready = ctx.get(dut.instr.ready)
                await ctx.tick()
                sent += ready and sent < len(queue)
                if ctx.get(dut.status.done):
                    break
            else:
                raise AssertionError(f"word {word:#034x}: decoder never finished")
            results.append((ctx.get(dut.status), ctx.get(dut.counters.instructions),
                            dispatched))
        ctx.set(dut.instr.valid, 0)

    simulate(dut, bench, max_cycles=budget, name="decoder_checks")
    return results


# The ECP5 decoder computes the extent with registered MULT18X18Ds (a longer check pipeline);
# their cycle-equivalent model stands in for the primitive here.
TARGETS = {"generic": None, "ecp5": MultiplierTarget(family="ecp5", simulation=True)}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("seed", range(3))
def test_checks_match_the_isa_rules_word_by_word(seed, target):
    rng = np.random.default_rng(seed)
    words = boundary_words(CFG, rng, 150)
    expected = [expected_error(w, CFG) for w in words]
    # The draw must reach every verdict, or the test proves little.
    assert {ErrorCode.NONE, ErrorCode.MEM_RANGE, ErrorCode.BUF_RANGE} <= set(expected)
    for word, want, (status, retired, dispatched) in zip(
            words, expected, run_words(CFG, words, TARGETS[target])):
        what = f"word {word:#034x} ({isa.decode(word)})"
        assert ErrorCode(status.error) == want, f"{what}: error {status.error}, want {want}"
        if want != ErrorCode.NONE:
            assert status.fault_index == 0 and retired == 0 and not dispatched, what
            continue
        assert retired == 2, f"{what}: retired {retired}"
        op = Opcode(word & 0xFF)
        unit = {Opcode.LOAD: "load", Opcode.MATMUL: "exec", Opcode.STORE: "store"}.get(op)
        assert [u for u, _ in dispatched] == ([unit] if unit else []), what
        fields = isa.decode(word)[1]
        if unit is not None:
            payload = dispatched[0][1]
            for name in ("n_rows", "mem_addr", "mem_stride", "act_addr", "acc_addr"):
                if name in fields and hasattr(payload, name):
                    assert getattr(payload, name) == fields[name], f"{what}: {name}"


def test_mem_end_at_the_limit_passes_and_one_past_faults():
    base = dict(target=0, buf_addr=0, n_rows=3, row_bytes=2, mem_stride=(1 << 17) + 7)
    span = 2 * ((1 << 17) + 7) + 2
    cfg = AcceleratorConfig(rows=2, cols=3, act_depth=16, wgt_depth=4, acc_depth=8,
                            param_depth=4, mem_width=4, mem_bytes=1 << 20)
    ok = encode(Opcode.LOAD, mem_addr=cfg.mem_bytes - span, **base)
    bad = encode(Opcode.LOAD, mem_addr=cfg.mem_bytes - span + 1, **base)
    (s_ok, _, _), (s_bad, _, _) = run_words(cfg, [ok, bad])
    assert ErrorCode(s_ok.error) == ErrorCode.NONE
    assert ErrorCode(s_bad.error) == ErrorCode.MEM_RANGE


def test_mem_range_with_extreme_products_and_strides():
    # The MEM_RANGE compare is split at room_bits: a product with bits above it fails at
    # once, a stride larger than the address leaves a room above mem_bytes, an address
    # past the memory a negative room. Each word against the ISA's rule.
    cfg = AcceleratorConfig(rows=2, cols=3, act_depth=16, wgt_depth=4, acc_depth=8,
                            param_depth=4, mem_width=4, mem_bytes=1 << 20)
    top = (1 << 24) - 1
    words = [encode(Opcode.LOAD, target=0, buf_addr=0, row_bytes=rb, n_rows=n,
                    mem_stride=stride, mem_addr=addr)
             for n, stride, addr, rb in [
                 (1, top, 0, 1), (1, top, cfg.mem_bytes - 1, 1), (1, top, cfg.mem_bytes, 1),
                 (2, top, 0, 1), (0xFFFF, top, 0, 1), (16, 1 << 16, 0, 4),
                 (17, 1 << 16, 0, 4), (16, 1 << 16, 4, 4), (1, 0, cfg.mem_bytes - 4, 4),
                 (1, 0, cfg.mem_bytes - 3, 4), (3, 0, (1 << 32) - 1, 1)]]
    expected = [expected_error(w, cfg) for w in words]
    assert {ErrorCode.NONE, ErrorCode.MEM_RANGE} <= set(expected)
    for target in sorted(TARGETS):
        for word, want, (status, _, _) in zip(words, expected,
                                              run_words(cfg, words, TARGETS[target])):
            assert ErrorCode(status.error) == want, f"{target} {isa.decode(word)}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_check_cycles_is_the_fetch_to_decode_distance(target):
    # A word needs check_cycles cycles in fetch: a longer pipeline without a larger
    # property (or the reverse) would read stale ends. Measured on a lone NOP: it is
    # accepted, then HALT is accepted exactly check_cycles + 2 cycles later (the move to
    # decode, and fetch takes a word only when empty).
    dut = _Dut(CFG, TARGETS[target])
    dec = dut.decoder
    accepted_at = []

    async def bench(ctx):
        queue = [encode(Opcode.NOP), encode(Opcode.HALT)]
        ctx.set(dec.load_cmd.ready, 1)
        for cycle in range(40):
            ctx.set(dut.instr.valid, bool(queue))
            if queue:
                ctx.set(dut.instr.payload, queue[0])
            ready = ctx.get(dut.instr.ready)
            await ctx.tick()
            if queue and ready:
                accepted_at.append(cycle)
                queue.pop(0)
            if ctx.get(dut.status.done):
                return
        raise AssertionError("HALT never completed")

    simulate(dut, bench, max_cycles=60, name="decoder_latency")
    assert accepted_at[1] - accepted_at[0] == dec.check_cycles + 2
    assert dec.check_cycles == (6 if target == "ecp5" else 4)


# ---- configuration knobs for the smallest FPGAs --------------------------------------------

def test_config_rejects_bad_overlap_and_counter_width():
    with pytest.raises(ValueError, match="overlap must be a bool, not 1"):
        AcceleratorConfig(overlap=1)
    with pytest.raises(ValueError, match="counter_width must be between 16 and 48, not 8"):
        AcceleratorConfig(counter_width=8)
    with pytest.raises(ValueError, match="counter_width must be a positive integer, not 0"):
        AcceleratorConfig(counter_width=0)


@pytest.mark.parametrize("overlap", [True, False])
def test_without_overlap_dispatch_waits_for_every_unit(overlap):
    overlapped = _overlap_program(overlap)
    if overlap:
        assert overlapped, "independent instructions should have overlapped"
    else:
        assert not overlapped, f"dispatched while units were busy: {overlapped}"


def test_scoreboard_timing_assertions_can_fire(monkeypatch):
    """The overlapped verdict's timing argument is an assertion: a decoder that waits one
    cycle too little in decode dispatches on a stale verdict, and the simulation says so.
    (The serial scoreboard's verdict is a stage shorter: for it one cycle less is safe.)"""
    from serrano.hw import decoder
    monkeypatch.setattr(decoder, "_DECODE_WAIT", decoder._DECODE_WAIT - 1)
    with pytest.raises(AssertionError, match="dispatch on a verdict"):
        _overlap_program(True)


def _overlap_program(overlap: bool) -> list:
    """Units modelled in the testbench (busy for 6 cycles per command, ready when idle):
    without overlap no command is dispatched while any unit is busy; with it, independent
    instructions do run side by side (so the check can tell the two apart)."""
    import dataclasses
    cfg = dataclasses.replace(CFG, overlap=overlap)
    dut = _Dut(cfg)
    dec = dut.decoder
    words = [encode(Opcode.LOAD, target=0, buf_addr=0, n_rows=2, row_bytes=2, mem_addr=0,
                    mem_stride=2),
             encode(Opcode.MATMUL, act_addr=8, n_rows=2, wgt_addr=2, acc_addr=0),
             encode(Opcode.STORE, mode=1, acc_addr=4, n_rows=1, n_cols=1, mem_addr=512),
             encode(Opcode.LOAD, target=0, buf_addr=4, n_rows=1, row_bytes=2, mem_addr=64),
             encode(Opcode.HALT)]
    units = {"load": dec.load_cmd, "exec": dec.exec_cmd, "store": dec.store_cmd}
    busy_in = {"load": dec.load_activity.busy, "exec": dec.exec_activity.busy,
               "store": dec.store_activity.busy}
    overlapped = []

    async def bench(ctx):
        left = {name: 0 for name in units}
        sent = 0
        for _ in range(300):
            for name, port in units.items():
                ctx.set(busy_in[name], left[name] > 0)
                ctx.set(port.ready, left[name] == 0)
            ctx.set(dut.instr.valid, sent < len(words))
            if sent < len(words):
                ctx.set(dut.instr.payload, words[sent])
            dispatched = [n for n, p in units.items() if ctx.get(p.valid) and ctx.get(p.ready)]
            ready = ctx.get(dut.instr.ready)
            busy_now = [n for n in units if left[n] > 0]
            await ctx.tick()
            sent += ready and sent < len(words)
            for name in dispatched:
                if busy_now:
                    overlapped.append((name, busy_now))
            left = {n: 6 if n in dispatched else max(0, left[n] - 1) for n in units}
            if ctx.get(dut.status.done):
                assert ErrorCode(ctx.get(dut.status.error)) == ErrorCode.NONE
                assert ctx.get(dut.counters.instructions) == len(words)
                return
        raise AssertionError("program never finished")

    simulate(dut, bench, max_cycles=400, name=f"decoder_overlap_{overlap}")
    return overlapped


@pytest.mark.parametrize("seed", range(4))
def test_without_overlap_results_match_golden(seed):
    """``overlap=False`` with 16-bit counters on the whole accelerator: every program gives
    the golden result and the same instruction count as with overlap."""
    import dataclasses
    from programs import SMALL_CONFIGS, random_program
    from serrano.sim.golden import GoldenBackend
    from serrano.sim.pysim import PysimBackend

    base = SMALL_CONFIGS["2x2_w4"]
    cfg = dataclasses.replace(base, overlap=False, counter_width=16)
    rng = np.random.default_rng(100 + seed)
    words, memory = random_program(cfg, rng, length=12, malformed=seed == 3)
    ref = GoldenBackend(cfg).run(words, memory)
    serial = PysimBackend(cfg).run(words, memory, max_cycles=30_000)
    overlapped = PysimBackend(base).run(words, memory, max_cycles=30_000)
    assert serial.status == ref.status
    np.testing.assert_array_equal(serial.memory, ref.memory)
    assert serial.counters["instructions"] == overlapped.counters["instructions"]
