# amaranth: UnusedElaboratable=no
# (test_constructor_errors builds components that raise in __init__ and are never elaborated)
"""Row engines (hw/vector_rows.py) in amaranth.sim, bit-exact against sim.kernels."""

import math

import numpy as np
import pytest
from amaranth import unsigned

from serrano.hw.config import AcceleratorConfig
from serrano.hw.mult import MultiplierTarget
from serrano.hw.vector_rows import (LayerNormRow, RowPass, SequentialDivider, SequentialSqrt,
                                    SoftmaxRow, SoloRow)
from serrano.sim import kernels

from simutil import simulate

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
TAG_BITS = 6
#: The engines' products as on ECP5 (the MULT18X18D models: P = 5, longer pipelines).
ECP5 = MultiplierTarget(family="ecp5", simulation=True)
TARGETS = pytest.mark.parametrize("target", [None, ECP5], ids=["generic", "ecp5"])


def _config(lanes: int, act_bits: int) -> AcceleratorConfig:
    return AcceleratorConfig(rows=lanes, cols=lanes, act_bits=act_bits)


def _blocks(row: np.ndarray, lanes: int, fill: int = 0) -> list[list[int]]:
    """The row cut into blocks of ``lanes`` (the last padded with ``fill``)."""
    nb = -(-len(row) // lanes)
    padded = np.full(nb * lanes, fill, dtype=np.int64)
    padded[:len(row)] = row
    return [[int(v) for v in padded[b * lanes:(b + 1) * lanes]] for b in range(nb)]


class RowDriver:
    """One testbench process: a source that follows ``want_pass`` (with random gaps) and a
    sink with random ``ready``, cycle by cycle; records every output block and, per row, the
    cycle of its first accepted block and of its last output block."""

    def __init__(self, dut, rows, cfg, *, stall: float, seed: int, long_gap: int = 0,
                 sink_stall: float | None = None):
        self.dut = dut
        self.rows = rows            # per row: [pass 1 blocks, pass 2 blocks, pass 3 blocks]
        self.cfg = cfg
        self.stall = stall
        self.long_gap = long_gap    # cycles without a block after each pass's first block
        self.sink_stall = stall if sink_stall is None else sink_stall
        self.rng = np.random.default_rng(seed)
        self.outputs = []           # (data, last, tag)
        self.first_accept = {}
        self.last_output = {}
        self.want_seen = []

    def n_out(self) -> int:
        return sum(len(r[2]) for r in self.rows)

    async def bench(self, ctx):
        dut = self.dut
        ctx.set(dut.cfg, self.cfg)
        r = p = b = 0
        tag = 0
        offered = False
        out_row, out_blk = 0, 0
        cycle = 0
        gap = 0
        while len(self.outputs) < self.n_out():
            want = ctx.get(dut.want_pass)
            gap = max(gap - 1, 0)
            if r < len(self.rows) and not offered and want == RowPass(p + 1) \
                    and not gap and self.rng.random() >= self.stall:
                payload = dict(self.rows[r][p][b])
                payload["last"] = int(b == len(self.rows[r][p]) - 1)
                payload["tag"] = tag % (1 << TAG_BITS)
                ctx.set(dut.i.payload, payload)
                ctx.set(dut.i.valid, 1)
                offered = True
            elif not offered:
                ctx.set(dut.i.valid, 0)
            ready = int(self.rng.random() >= self.sink_stall)
            ctx.set(dut.o.ready, ready)
            in_row = len(self.first_accept) > out_row     # a row started, not all out
            _, _, i_ready, o_valid, o_payload, want_now, busy = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, dut.o.payload, dut.want_pass, dut.busy)
            assert not (i_ready and want_now == RowPass.WAIT), "ready while WAIT"
            assert busy or not in_row, f"not busy in row {out_row} (cycle {cycle})"
            if offered and i_ready:
                if p == 0 and b == 0:
                    self.first_accept[r] = cycle
                offered = False
                tag += 1
                b += 1
                gap = self.long_gap if b == 1 else 0
                if b == len(self.rows[r][p]):
                    b, p = 0, p + 1
                    if p == 3:
                        p, r = 0, r + 1
            if o_valid and ready:
                lanes = len(o_payload.data)
                self.outputs.append(([int(o_payload.data[i]) for i in range(lanes)],
                                     int(o_payload.last), int(o_payload.tag)))
                out_blk += 1
                if out_blk == len(self.rows[out_row][2]):
                    self.last_output[out_row] = cycle
                    out_row, out_blk = out_row + 1, 0
            cycle += 1
        ctx.set(dut.i.valid, 0)
        for _ in range(3):
            await ctx.tick()
        assert not ctx.get(dut.busy), "busy after the last output"
        assert ctx.get(dut.want_pass) == RowPass.FIRST

    def check(self, expected: list[np.ndarray], lanes: int) -> None:
        """Outputs against the expected rows (lanes past the row 0), tags and last flags."""
        k = 0
        tag = 0
        for r, row in enumerate(expected):
            blocks = _blocks(row, lanes)
            tag += len(self.rows[r][0]) + len(self.rows[r][1])
            for j, blk in enumerate(blocks):
                got, last, got_tag = self.outputs[k]
                assert got == blk, f"row {r} block {j}: {got} != {blk}"
                assert last == int(j == len(blocks) - 1)
                assert got_tag == tag % (1 << TAG_BITS)
                k += 1
                tag += 1
        assert k == len(self.outputs)


# ---- sequential steps --------------------------------------------------------------------

def test_divider_and_sqrt():
    rng = np.random.default_rng(1)
    div = SequentialDivider(53, 31, 32)
    cases = [(1 << 52, (1 << 20) + 1), (1 << 52, (1 << 31) - 1), (0, 5), (4094 * (1 << 32) + 7, 4095)]
    for _ in range(20):
        d = int(rng.integers(1, 1 << 21))   # dividend < 2**53
        cases.append((int(rng.integers(0, d)) << 32 | int(rng.integers(0, 1 << 32)), d))

    async def bench_div(ctx):
        for n, d in cases:
            ctx.set(div.dividend, n)
            ctx.set(div.divisor, d)
            ctx.set(div.start, 1)
            await ctx.tick()
            ctx.set(div.start, 0)
            for _ in range(div.cycles):
                assert ctx.get(div.busy)
                await ctx.tick()
            assert not ctx.get(div.busy)
            assert (ctx.get(div.quotient), ctx.get(div.remainder)) == divmod(n, d), (n, d)

    simulate(div, bench_div, max_cycles=40 * len(cases), name="divider")

    sq = SequentialSqrt(31)
    radicands = [0, 1, 2, 3, 4, (1 << 62) - 1, (1 << 62) - 2, (1 << 42) - 1, 1 << 42]
    radicands += [int(v) for v in rng.integers(0, 1 << 62, 20)]

    async def bench_sqrt(ctx):
        for v in radicands:
            ctx.set(sq.radicand, v)
            ctx.set(sq.start, 1)
            await ctx.tick()
            ctx.set(sq.start, 0)
            for _ in range(sq.cycles):
                await ctx.tick()
            assert not ctx.get(sq.busy)
            assert ctx.get(sq.root) == math.isqrt(v) == int(kernels.isqrt(v)), v

    simulate(sq, bench_sqrt, max_cycles=40 * len(radicands), name="sqrt")


# ---- softmax -----------------------------------------------------------------------------

def _softmax_rows(xs, masks, lanes, act_bits):
    sentinel = kernels.mask_sentinel(act_bits)
    rows = []
    for x, mask in zip(xs, masks):
        xb = _blocks(x, lanes)
        mb = _blocks(mask, lanes, fill=sentinel)
        n = len(x)
        blocks = []
        for j, (d, bb) in enumerate(zip(xb, mb)):
            lanes_mask = sum(1 << i for i in range(lanes) if j * lanes + i < n)
            blocks.append({"data": d, "b": bb, "lanes": lanes_mask})
        rows.append([blocks, blocks, blocks])
    return rows


def run_softmax(lanes, act_bits, xs, masks, params, *, stall=0.0, seed=0, long_gap=0,
                sink_stall=None, target=None):
    dut = SoloRow(SoftmaxRow(_config(lanes, act_bits), unsigned(TAG_BITS), target=target))
    rows = _softmax_rows(xs, masks, lanes, act_bits)
    drv = RowDriver(dut, rows, {"multiplier": params.multiplier, "shift": params.shift},
                    stall=stall, seed=seed, long_gap=long_gap, sink_stall=sink_stall)
    nbs = [len(r[0]) for r in rows]
    budget = sum(dut.row_cycles(nb) + 3 * long_gap for nb in nbs) * (4 if stall else 1) + 50
    budget += 10 * sum(nbs) if sink_stall else 0
    simulate(dut, drv.bench, max_cycles=budget, name="softmax_row")
    expected = [kernels.softmax(np.asarray(x)[None], np.asarray(mk)[None], params)[0]
                for x, mk in zip(xs, masks)]
    drv.check(expected, lanes)
    return dut, drv


def _random_softmax(rng, n, act_bits, p_mask=0.25, scale=3000):
    lo, hi = kernels.act_range(act_bits)
    x = rng.normal(0, scale, n).round().astype(np.int64)
    mask = rng.integers(lo + 1, hi + 1, n) // 64
    mask[rng.random(n) < p_mask] = lo
    return x, mask


@pytest.mark.parametrize("lanes,act_bits", [(2, 8), (2, 16), (8, 16)])
def test_softmax_random(lanes, act_bits):
    rng = np.random.default_rng(lanes * 100 + act_bits)
    params = kernels.softmax_params(2.0 ** -11, act_bits)
    xs, masks = [], []
    for n in (1, lanes + 1, 3 * lanes, 5 * lanes - 1):
        x, mk = _random_softmax(rng, n, act_bits)
        xs.append(x)
        masks.append(mk)
    run_softmax(lanes, act_bits, xs, masks, params, stall=0.3, seed=lanes)


def test_softmax_corners():
    """All masked, one unmasked key, extreme int32 scores, extreme multipliers and shifts."""
    lanes, act_bits = 2, 8
    rng = np.random.default_rng(5)
    lo, hi = kernels.act_range(act_bits)
    n = 5
    xs = [rng.integers(-100, 100, n), rng.integers(-100, 100, n),
          np.array([INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN, 0]),
          np.array([INT32_MIN] * 3), np.array([INT32_MAX] * 3)]
    masks = [np.full(n, lo), np.array([lo, lo, 7, lo, lo]),
             np.array([hi, lo + 1, hi - 1, 0, lo]), np.array([lo + 1, 0, lo + 1]),
             np.array([hi, hi, 0])]
    params = [kernels.softmax_params(2.0 ** -11, act_bits),
              kernels.SoftmaxParams(act_bits, (1 << 29) - 1, 61, 26, 127 << 26),
              kernels.SoftmaxParams(act_bits, (1 << 29) - 1, 40, 26, 127 << 26),
              kernels.SoftmaxParams(act_bits, 1 << 28, 1, 26, 127 << 26),
              kernels.SoftmaxParams(act_bits, 1 << 28, 44, 26, 127 << 26)]
    for pr in params:
        run_softmax(lanes, act_bits, xs, masks, pr, stall=0.2, seed=pr.shift)


@TARGETS
@pytest.mark.parametrize("lanes", [2, 8])
def test_softmax_cycles(lanes, target):
    """Back-to-back rows without stalls: each row's cycles match ``row_cycles``."""
    rng = np.random.default_rng(9)
    params = kernels.softmax_params(2.0 ** -11, 16)
    xs, masks = [], []
    for n in (1, 4 * lanes + 1):
        x, mk = _random_softmax(rng, n, 16)
        xs.append(x)
        masks.append(mk)
    dut, drv = run_softmax(lanes, 16, xs, masks, params, target=target)
    for r, x in enumerate(xs):
        nb = -(-len(x) // lanes)
        assert drv.last_output[r] - drv.first_accept[r] + 1 == dut.row_cycles(nb), r
    assert drv.first_accept[1] - drv.first_accept[0] == \
        dut.row_cycles(-(-len(xs[0]) // lanes)) - dut.output_latency


# ---- layernorm ---------------------------------------------------------------------------

def _layernorm_rows(xs, residuals, params, lanes):
    gm = np.asarray(params.gamma_mult, dtype=np.int64)
    bw = np.asarray(params.beta_add, dtype=np.int64)
    rows = []
    for x, res in zip(xs, residuals):
        n = len(x)
        res = np.zeros(n, np.int64) if res is None else np.broadcast_to(res, (n,))
        blocks = []
        for j, (d, bb, g, be) in enumerate(zip(_blocks(x, lanes), _blocks(res, lanes),
                                               _blocks(gm, lanes), _blocks(bw, lanes))):
            lanes_mask = sum(1 << i for i in range(lanes) if j * lanes + i < n)
            blocks.append({"data": d, "b": bb, "lanes": lanes_mask, "gamma": g, "beta": be})
        rows.append([blocks, blocks, blocks])
    return rows


def run_layernorm(lanes, act_bits, xs, residuals, params, *, stall=0.0, seed=0, long_gap=0,
                  sink_stall=None, target=None):
    dut = SoloRow(LayerNormRow(_config(lanes, act_bits), unsigned(TAG_BITS), target=target))
    rows = _layernorm_rows(xs, residuals, params, lanes)
    cfg = {"n_elems": params.n_elems, "eps_mult": params.eps_mult,
           "eps_shift": params.eps_shift, "res_mult": params.res_mult or 0,
           "res_shift": params.res_shift or 1, "out_shift": params.out_shift}
    drv = RowDriver(dut, rows, cfg, stall=stall, seed=seed, long_gap=long_gap,
                    sink_stall=sink_stall)
    budget = sum(dut.row_cycles(len(r[0])) + 3 * long_gap for r in rows) * (4 if stall else 1) + 50
    budget += 10 * sum(len(r[0]) for r in rows) if sink_stall else 0
    simulate(dut, drv.bench, max_cycles=budget, name="layernorm_row")
    expected = [kernels.layernorm(np.asarray(x)[None], params,
                                  None if res is None else np.asarray(res)[None])[0]
                for x, res in zip(xs, residuals)]
    drv.check(expected, lanes)
    return dut, drv


def _ln_params(rng, n, act_bits, *, eps=1e-12, s_x=2.0 ** -14, residual=True):
    q_max = kernels.act_range(act_bits)[1]
    gamma = rng.normal(1, 0.3, n)
    beta = rng.normal(0, 0.3, n)
    return kernels.layernorm_params(s_x, 8 / q_max, gamma, beta, eps, act_bits,
                                    4 / q_max if residual else None)


@pytest.mark.parametrize("lanes,act_bits,n", [(2, 8, 5), (2, 16, 1), (2, 16, 12), (8, 16, 37),
                                              (8, 8, 8)])
def test_layernorm_random(lanes, act_bits, n):
    rng = np.random.default_rng(lanes * 1000 + act_bits * 10 + n)
    params = _ln_params(rng, n, act_bits)
    lo, hi = kernels.act_range(act_bits)
    xs = [rng.normal(0, 2 / 2.0 ** -14, n).round().astype(np.int64),
          rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True),
          rng.integers(-3, 4, n)]
    residuals = [rng.integers(lo, hi, n, endpoint=True), rng.integers(lo, hi, n, endpoint=True),
                 None]
    run_layernorm(lanes, act_bits, xs, residuals, params, stall=0.3, seed=n)


def test_layernorm_corners():
    """Constant rows (variance 0, eps 0 and not), extreme int32 rows and residuals that
    saturate h, extreme eps, G, Bw and shifts."""
    lanes, act_bits, n = 2, 16, 5
    rng = np.random.default_rng(11)
    lo, hi = kernels.act_range(act_bits)
    xs = [np.full(n, 12345), np.full(n, INT32_MIN), np.full(n, INT32_MAX),
          np.array([INT32_MIN, INT32_MAX] * 2 + [0]), np.array([INT32_MAX - 5, 0, -7, 1, 2]),
          np.array([0, 0, 0, 0, 1])]
    residuals = [None, np.full(n, lo), np.full(n, hi), np.array([lo, hi, lo, hi, 0]),
                 np.array([hi, hi, lo, 0, 1]), None]
    base = _ln_params(rng, n, act_bits)
    variants = [
        base,
        _ln_params(rng, n, act_bits, eps=0.0),
        _ln_params(rng, n, act_bits, eps=1e3),
        kernels.LayerNormParams(act_bits, n, ((1 << 17) - 1, -(1 << 17) + 1, 5, -3, 0),
                                ((1 << 61) - 1, -(1 << 61) + 1, 12345, -999, 0), 1,
                                (1 << 32) - 1, -2000, (1 << 24) - 1, 1),
        kernels.LayerNormParams(act_bits, n, ((1 << 17) - 1, -(1 << 17) + 1, 5, -3, 77),
                                (1 << 40, -(1 << 40), 1 << 36, -(1 << 36) + 1, 3), 37,
                                1 << 31, 2000, 1 << 23, 62),
        kernels.LayerNormParams(act_bits, n, (1000,) * n, (0,) * n, 20, (1 << 31) + 1, 40,
                                (1 << 23) + 5, 30),
    ]
    for k, pr in enumerate(variants):
        run_layernorm(lanes, act_bits, xs, residuals, pr, stall=0.2, seed=k)


@TARGETS
@pytest.mark.parametrize("lanes", [2, 8])
def test_layernorm_cycles(lanes, target):
    """Back-to-back rows without stalls: each row's cycles match ``row_cycles``."""
    rng = np.random.default_rng(12)
    n = 3 * lanes + 1
    params = _ln_params(rng, n, 16)
    xs = [rng.integers(-1 << 20, 1 << 20, n) for _ in range(2)]
    dut, drv = run_layernorm(lanes, 16, xs, [None, None], params, target=target)
    nb = -(-n // lanes)
    for r in range(2):
        assert drv.last_output[r] - drv.first_accept[r] + 1 == dut.row_cycles(nb), r
    assert drv.first_accept[1] - drv.first_accept[0] == dut.row_cycles(nb) - dut.output_latency


# ---- long rows, many blocks --------------------------------------------------------------

def test_long_gaps():
    """30 cycles without a block inside every pass: the pipeline empties mid-pass (busy must
    stay up) and the results do not change."""
    rng = np.random.default_rng(31)
    params = kernels.softmax_params(2.0 ** -11, 8)
    xs, masks = zip(*(_random_softmax(rng, n, 8) for n in (5, 6)))
    run_softmax(2, 8, list(xs), list(masks), params, long_gap=30)
    ln = _ln_params(rng, 5, 16)
    run_layernorm(2, 16, [rng.integers(-1000, 1000, 5)], [rng.integers(-9, 9, 5)], ln,
                  long_gap=30)


@TARGETS
def test_slow_sink(target):
    """A sink ready one cycle in five: the output FIFO fills, the input waits, nothing is
    lost or reordered."""
    rng = np.random.default_rng(41)
    params = kernels.softmax_params(2.0 ** -11, 16)
    xs, masks = zip(*(_random_softmax(rng, n, 16) for n in (40, 3)))
    run_softmax(2, 16, list(xs), list(masks), params, sink_stall=0.8, seed=7, target=target)
    ln = _ln_params(rng, 40, 8)
    run_layernorm(2, 8, [rng.integers(-1 << 20, 1 << 20, 40)], [None], ln, sink_stall=0.8,
                  seed=8, target=target)


def test_ecp5_random():
    """Random rows with the ECP5 products (P = 5: every stage after a product moves), with
    stalls, residuals and masks, bit-exact."""
    rng = np.random.default_rng(77)
    params = kernels.softmax_params(2.0 ** -11, 16)
    xs, masks = zip(*(_random_softmax(rng, n, 16) for n in (1, 3, 9)))
    run_softmax(2, 16, list(xs), list(masks), params, stall=0.3, seed=1, target=ECP5)
    n = 12
    ln = _ln_params(rng, n, 16)
    lo, hi = kernels.act_range(16)
    run_layernorm(2, 16, [rng.normal(0, 2 / 2.0 ** -14, n).round().astype(np.int64),
                          rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)],
                  [rng.integers(lo, hi, n, endpoint=True), None], ln, stall=0.3, seed=2,
                  target=ECP5)


def test_many_blocks():
    """Rows of 31 and 64 blocks (L = 2)."""
    rng = np.random.default_rng(21)
    params = kernels.softmax_params(2.0 ** -12, 16)
    xs, masks = zip(*(_random_softmax(rng, n, 16) for n in (61, 128)))
    run_softmax(2, 16, list(xs), list(masks), params, stall=0.1, seed=3)
    n = 127
    ln = _ln_params(rng, n, 8)
    run_layernorm(2, 8, [rng.integers(-1 << 24, 1 << 24, n)], [rng.integers(-128, 128, n)], ln,
                  stall=0.1, seed=4)


@pytest.mark.slow
@pytest.mark.parametrize("act_bits", [8, 16])
def test_longest_rows(act_bits):
    """n = 4095 (512 blocks of 8 lanes) and n = 4089, back to back, with stalls."""
    rng = np.random.default_rng(act_bits)
    params = kernels.softmax_params(2.0 ** -11, act_bits)
    xs, masks = zip(*(_random_softmax(rng, n, act_bits, scale=1000) for n in (4095, 4089)))
    run_softmax(8, act_bits, list(xs), list(masks), params, stall=0.1, seed=5)
    n = kernels.MAX_ELEMS
    lo, hi = kernels.act_range(act_bits)
    ln = _ln_params(rng, n, act_bits)
    run_layernorm(8, act_bits, [rng.normal(0, 1e6, n).round().astype(np.int64),
                                rng.integers(-5, 5, n)],
                  [rng.integers(lo, hi, n, endpoint=True), None], ln, stall=0.1, seed=6)


@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16])
def test_row_cycles_formula(lanes):
    """The closed formulas of the module docstring (the simulations check ``row_cycles``)."""
    lv = math.ceil(math.log2(lanes))
    sm, ln = SoftmaxRow(_config(lanes, 8)), LayerNormRow(_config(lanes, 8))
    for nb in (1, 7, 512):
        assert sm.row_cycles(nb) == 3 * nb + 2 * lv + 43
        assert ln.row_cycles(nb) == 3 * nb + 2 * lv + 164
    # With products of latency P, each product on a pass's path adds P - 1 (softmax: 4
    # product stages over the passes and the output, LayerNorm 6).
    from serrano.hw.vector_bank import product_latency
    P = product_latency(ECP5)
    assert P == 3
    sm, ln = (cls(_config(lanes, 8), target=ECP5) for cls in (SoftmaxRow, LayerNormRow))
    for nb in (1, 7, 512):
        assert sm.row_cycles(nb) == 3 * nb + 2 * lv + 43 + 4 * (P - 1)
        assert ln.row_cycles(nb) == 3 * nb + 2 * lv + 164 + 6 * (P - 1)


def test_constructor_errors():
    with pytest.raises(TypeError, match="AcceleratorConfig"):
        SoftmaxRow(None)
    with pytest.raises(TypeError, match="AcceleratorConfig"):
        LayerNormRow("8x8")
    with pytest.raises(ValueError, match="quotient_bits"):
        SequentialDivider(8, 4, 9)
    dut = SoftmaxRow(_config(8, 16))
    assert dut.lanes == 8 and dut.max_blocks == 512 and dut.levels == 3
