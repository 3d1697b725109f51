"""Processing element and systolic array against numpy, following the array's timing contract."""

import numpy as np
import pytest
from amaranth import signed
from amaranth.hdl import Fragment
from amaranth.lib import data

from serrano.hw.array import ProcessingElement, SystolicArray
from serrano.hw.config import AcceleratorConfig
from serrano.hw.mult import MultiplierTarget
from simutil import simulate


def test_pe_multiplies_with_active_weight_and_swaps_on_flag():
    pe = ProcessingElement(psum_width=18)
    seen = []

    async def step(ctx, a=0, psum_in=0, swap=0, w=None):
        """One activation in; the partial sum joins the registered product a cycle later."""
        ctx.set(pe.a_in, a); ctx.set(pe.swap_in, swap)
        ctx.set(pe.w_shift, w is not None); ctx.set(pe.w_in, 0 if w is None else w)
        await ctx.tick()
        ctx.set(pe.swap_in, 0); ctx.set(pe.w_shift, 0)
        ctx.set(pe.psum_in, psum_in)
        await ctx.tick()
        seen.append(ctx.get(pe.psum_out))
        ctx.set(pe.psum_in, 0)

    async def bench(ctx):
        ctx.set(pe.w_in, -7); ctx.set(pe.w_shift, 1)
        await ctx.tick()
        assert ctx.get(pe.w_out) == -7          # shadow holds the shifted weight
        await step(ctx, swap=1)                 # flag one cycle ahead of the activations
        await step(ctx, a=127, psum_in=1000, w=5)  # next weight shifts in meanwhile
        assert ctx.get(pe.w_out) == 5
        await step(ctx, a=-128, psum_in=-3)     # still the active weight -7
        await step(ctx, swap=1)
        await step(ctx, a=-128, psum_in=7)      # now 5

    simulate(pe, bench, max_cycles=100, name="pe")
    assert seen[1:] == [1000 + 127 * -7, -3 + -128 * -7, 0, 7 + -128 * 5]


def test_pe_with_16_bit_activations():
    """act_bits = 16: the activation operand and its forwarding register are int16."""
    pe = ProcessingElement(psum_width=26, act_bits=16)
    assert pe.multiplier.a.shape() == signed(16) and pe.multiplier.p.shape() == signed(24)
    cases = [(-32768, -128, 5), (32767, -128, -1), (-32768, 127, 0), (32767, 127, 1 << 24),
             (-1, -128, -(1 << 25)), (12345, -77, 3)]
    seen = []

    async def bench(ctx):
        for a, w, psum in cases:
            ctx.set(pe.w_in, w); ctx.set(pe.w_shift, 1)
            await ctx.tick()
            ctx.set(pe.w_shift, 0); ctx.set(pe.swap_in, 1)
            await ctx.tick()
            ctx.set(pe.swap_in, 0); ctx.set(pe.a_in, a)
            await ctx.tick()
            assert ctx.get(pe.a_out) == a        # forwarded unchanged, all 16 bits
            ctx.set(pe.a_in, 0); ctx.set(pe.psum_in, psum)
            await ctx.tick()
            seen.append(ctx.get(pe.psum_out))
            ctx.set(pe.psum_in, 0)

    simulate(pe, bench, max_cycles=100, name="pe16")
    assert seen == [psum + a * w for a, w, psum in cases]


def _schedule(rows: int, tiles: list, rng: np.random.Generator, gaps: bool):
    """Cycle-by-cycle array inputs for a list of (W, X) tiles, following the contract:
    weight rows bottom-first, first row >= preload_gap after the previous swap, swap >= 1
    after the last row; random idle cycles when ``gaps``."""
    gap_cycles = lambda: int(rng.integers(0, 3)) if gaps else 0
    cycles: dict[int, dict] = {}
    expected = []  # (cycle presented, tile index, vector)
    prev_swap = None
    t_free = 0  # first cycle the next vector may use
    t = 0
    for j, (w, x) in enumerate(tiles):
        t = t if prev_swap is None else max(t, prev_swap + rows)
        for k in reversed(range(rows)):
            t += gap_cycles()
            cycles.setdefault(t, {})["w"] = w[k]
            t += 1
        s = max(t, t_free) + gap_cycles()
        for i, vec in enumerate(x):
            s += gap_cycles() if i else 0
            cycles.setdefault(s, {})["a"] = (vec, i == 0)
            expected.append((s, j, vec))
            if i == 0:
                prev_swap = s
            s += 1
        t_free = s
        t = max(t, prev_swap + rows)
    return cycles, expected


TARGETS = {
    "ecp5": MultiplierTarget(family="ecp5", simulation=True),            # latency 5
    "ice40_mixed": MultiplierTarget(family="ice40", dsp_pes=3, simulation=True),  # 3, DSP + LUT
}


@pytest.mark.parametrize("rows,cols,gaps,target,act_bits", [
    *[(r, c, g, None, 8) for r, c in [(1, 1), (1, 5), (5, 1), (2, 3), (3, 2), (4, 4)]
      for g in (False, True)],
    (3, 2, True, "ecp5", 8), (2, 3, False, "ice40_mixed", 8), (1, 4, True, "ice40_mixed", 8),
    # 16-bit activations: int16 x int8 in every multiplier kind (ice40_mixed has lut PEs)
    (4, 4, True, None, 16), (2, 3, False, None, 16), (3, 2, True, "ecp5", 16),
    (2, 3, True, "ice40_mixed", 16), (1, 4, False, "ice40_mixed", 16),
])
def test_array_streams_tiles_back_to_back(rows, cols, gaps, target, act_bits):
    cfg = AcceleratorConfig(rows=rows, cols=cols, act_bits=act_bits)
    array = SystolicArray(cfg, TARGETS.get(target))
    rng = np.random.default_rng(rows * 100 + cols + gaps + (act_bits - 8) * 1000)
    lengths = [1, 2, rows, 2 * rows, 2 * rows + 3, 1, 7, 1]
    a_min, a_max = -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1
    tiles = []
    for n, m in enumerate(lengths):
        w = rng.integers(-128, 128, (rows, cols))
        if n == 0:
            w[:] = -128  # extremes: a_min * -128 products summed over the whole column
            x = np.full((m, rows), a_min)
        elif n == 1:
            w[:] = 127
            x = np.full((m, rows), a_min)
        elif n == 5 and act_bits == 16:
            w[:] = -128
            x = np.full((m, rows), a_max)
        else:
            x = rng.integers(a_min, a_max + 1, (m, rows))
        tiles.append((w, x))
    cycles, expected = _schedule(rows, tiles, rng, gaps)
    want = {s + array.latency: x @ tiles[j][0] for s, j, x in expected}
    end = max(want) + 1
    got = {}

    async def bench(ctx):
        for t in range(end + 1):
            inp = cycles.get(t, {})
            ctx.set(array.w_shift, "w" in inp)
            if "w" in inp:
                ctx.set(array.w, [int(v) for v in inp["w"]])
            if "a" in inp:
                vec, swap = inp["a"]
                ctx.set(array.a, [int(v) for v in vec])
                ctx.set(array.swap, swap)
            else:
                ctx.set(array.a, [0] * rows)
                ctx.set(array.swap, 0)
            if t in want:
                got[t] = [ctx.get(array.out[c]) for c in range(cols)]
            await ctx.tick()

    simulate(array, bench, max_cycles=end + 10, name=f"array_{rows}x{cols}")
    assert len(got) == len(want) == sum(len(x) for _, x in tiles)
    for t, ref in want.items():
        np.testing.assert_array_equal(got[t], ref, err_msg=f"result due in cycle {t}")


def test_array_latency_and_partial_sum_width_follow_the_config():
    cfg = AcceleratorConfig(rows=5, cols=3)
    array = SystolicArray(cfg)
    Fragment.get(array, None)
    assert array.latency == 1 + 5 + 3 + 1  # input registers, skew/travel, product
    assert array.preload_gap == 5
    ecp5_array = SystolicArray(cfg, TARGETS["ecp5"])
    Fragment.get(ecp5_array, None)
    assert ecp5_array.latency == 1 + 5 + 3 + 5
    assert cfg.psum_width == 16 + 3  # 5 products of up to 2**14 need 19 signed bits
    layout = data.Layout.cast(array.signature.members["out"].shape)
    assert layout.size == 3 * cfg.psum_width
    cfg16 = AcceleratorConfig(rows=5, cols=3, act_bits=16)
    assert cfg16.psum_width == 24 + 3  # 5 products of up to 2**22 need 27 signed bits
    array16 = SystolicArray(cfg16)
    assert data.Layout.cast(array16.signature.members["a"].shape).size == 5 * 16
    assert data.Layout.cast(array16.signature.members["out"].shape).size == 3 * 27
    Fragment.get(array16, None)
