# amaranth: UnusedElaboratable=no
# (test_constructor_errors builds components that raise in __init__ and are never elaborated)
"""The vector unit's lane datapaths (hw.vector_lanes) in amaranth.sim, bit-exact against
sim.kernels, with random bubbles and backpressure."""

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth import Module, unsigned
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from serrano.hw.mult import MultiplierTarget
from serrano.hw.vector_lanes import AddLanes, GeluLanes, PrescaleLanes, SoloLanes
from serrano.sim import kernels
from serrano.sim.numerics import INT32_MAX, INT32_MIN

from simutil import simulate

GENERIC = None
ECP5 = MultiplierTarget(family="ecp5", simulation=True)
TAG = unsigned(5)
X_CORNERS = [0, 1, -1, 2, -2, INT32_MAX, INT32_MIN, INT32_MIN + 1, INT32_MAX - 1,
             1 << 16, -(1 << 16), 0x7FFF, -0x8000, 0xFFFF, -0x10000]


@dataclass
class Command:
    """Blocks sharing one set of scalar parameters (``scalars`` None: per-block ``params``)."""
    scalars: dict | None
    blocks: list[dict]                      # the i.payload of each block, without its tag
    expected: np.ndarray                    # [n_blocks, L]
    params: list = field(default_factory=list)   # per-block params (PrescaleLanes)


def run(dut, commands: list[Command], rng: np.random.Generator, *, p_valid: float = 1.0,
        p_ready: float = 1.0, name: str, check_timing: bool = False, block_params=None,
        fixed: tuple | None = None) -> None:
    """Drive ``commands`` into ``dut`` (a command's scalars set once the previous command's
    results have all left), take the results with ``o.ready`` high with probability
    ``p_ready`` and check every one, with its tag, in order; no result may appear beyond them.
    With ``check_timing`` (needs ``p_valid = p_ready = 1``): each result exactly
    ``dut.latency`` cycles after its block was accepted, and no block ever waits.
    ``block_params`` is where per-block parameters go (``dut.params``); ``fixed`` a
    ``(signal, value)`` set once at the start."""
    block_params = dut.params if block_params is None else block_params
    total = sum(len(c.blocks) for c in commands)
    tags = [int(t) for t in rng.integers(0, 1 << TAG.width, total)]
    accepted: list[int] = []
    received: list = []

    async def producer(ctx):
        now = 0
        k = 0
        if fixed is not None:
            ctx.set(*fixed)
        for c in commands:
            while len(received) < k:     # drain: scalars change only between commands
                await ctx.tick()
                now += 1
            if c.scalars is not None:
                ctx.set(dut.params, c.scalars)
            for j, blk in enumerate(c.blocks):
                while rng.random() >= p_valid:
                    await ctx.tick()
                    now += 1
                ctx.set(dut.i.payload, dict(blk, tag=tags[k]))
                if c.scalars is None:
                    ctx.set(block_params, c.params[j])
                ctx.set(dut.i.valid, 1)
                while True:              # i.ready depends on registers only
                    ready = ctx.get(dut.i.ready)
                    if check_timing:
                        assert ready, f"{name}: block {k} waits with the output ready"
                    await ctx.tick()
                    now += 1
                    if ready:
                        break
                accepted.append(now - 1)
                ctx.set(dut.i.valid, 0)
                k += 1

    async def consumer(ctx):
        now = 0
        while len(received) < total + 8:   # 8 idle cycles: nothing more may come out
            ready = rng.random() < p_ready
            ctx.set(dut.o.ready, ready)
            if ready and ctx.get(dut.o.valid):
                out = ctx.get(dut.o.payload)
                assert len(received) < total, f"{name}: a result without a block"
                received.append((now, [out.y[n] for n in range(dut.lanes)], out.tag))
            elif len(received) >= total:
                received.append(None)
            await ctx.tick()
            now += 1

    budget = int(total / min(p_valid, p_ready) * 3) + 2 * dut.latency + 200
    simulate(dut, producer, consumer, max_cycles=budget, name=name)
    k = 0
    for c in commands:
        for j, blk in enumerate(c.blocks):
            t, got, tag = received[k]
            want = [int(v) for v in c.expected[j]]
            assert got == want, (f"{name}: block {k} ({blk}, scalars {c.scalars}, "
                                 f"params {c.params[j] if c.params else None}): "
                                 f"{got} != {want}")
            assert tag == tags[k], f"{name}: block {k} tag {tag} != {tags[k]}"
            if check_timing:
                assert t - accepted[k] == dut.latency, \
                    f"{name}: block {k} after {t - accepted[k]} cycles, not {dut.latency}"
                assert k == 0 or accepted[k] == accepted[k - 1] + 1, f"{name}: a bubble"
            k += 1


# ---- data --------------------------------------------------------------------------------

def x_values(rng: np.random.Generator, size: int, scale: float | None = None) -> np.ndarray:
    """int32 inputs: corners, full-range, every magnitude, and (``scale``) real values in
    [-12, 12] at that scale (the interesting part of GELU)."""
    mag = rng.integers(0, 32, size)
    small = rng.integers(-(1 << 31), 1 << 31, size) >> (31 - mag)
    pick = rng.random(size)
    x = np.where(pick < 0.15, rng.choice(X_CORNERS, size),
                 np.where(pick < 0.4, rng.integers(INT32_MIN, INT32_MAX, size, endpoint=True),
                          small))
    if scale is not None:
        real = np.clip(np.round(rng.uniform(-12, 12, size) / scale), INT32_MIN, INT32_MAX)
        x = np.where(rng.random(size) < 0.6, real.astype(np.int64), x)
    return x.astype(np.int64)


def blocks_of(lanes: int, **arrays) -> list[dict]:
    n = len(next(iter(arrays.values()))) // lanes
    return [{k: [int(v) for v in a[i * lanes:(i + 1) * lanes]] for k, a in arrays.items()}
            for i in range(n)]


def prescale_command(rng: np.random.Generator, lanes: int, n_blocks: int) -> Command:
    """Random blocks with a new parameter set in every lane of every block: realistic
    prescale_params multipliers and right shifts, arbitrary int32 multipliers and 8-bit
    shift fields (which saturate), biases that wrap the sum."""
    size = lanes * n_blocks
    x = x_values(rng, size)
    realistic = rng.random(size) < 0.6
    mult = np.where(realistic, rng.integers(1 << 30, 1 << 31, size),
                    rng.integers(INT32_MIN, INT32_MAX, size, endpoint=True))
    mult = np.where(rng.random(size) < 0.05, rng.choice([0, INT32_MIN, INT32_MAX], size), mult)
    shift = np.where(realistic, rng.integers(-31, 1, size), rng.integers(-128, 128, size))
    bias = np.where(rng.random(size) < 0.8, rng.integers(-(1 << 16), 1 << 16, size),
                    rng.integers(INT32_MIN, INT32_MAX, size, endpoint=True))
    pre = {"bias": bias, "multiplier": mult, "shift": shift}
    expected = kernels.prescale(x, pre).reshape(n_blocks, lanes)
    params = [[{"bias": int(bias[i]), "multiplier": int(mult[i]), "shift": int(shift[i]),
                "zero_point": int(rng.integers(-128, 128)), "lo": -128, "hi": 127}
               for i in range(b * lanes, (b + 1) * lanes)] for b in range(n_blocks)]
    return Command(None, blocks_of(lanes, x=x), expected, params)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(2.0 ** rng.uniform(lo, hi))


def gelu_command(rng: np.random.Generator, lanes: int, act_bits: int, n_blocks: int,
                 extreme: bool = False) -> Command:
    """One GELU parameter set (from gelu_params with random scales, or with ``extreme``
    arbitrary raw constants: the smallest and largest shifts, negative multipliers) and
    ``n_blocks`` blocks of inputs spread over the table at its scale."""
    size = lanes * n_blocks
    if extreme:
        p = kernels.GeluParams(act_bits, int(rng.choice([1 << 30, (1 << 31) - 1])),
                               int(rng.choice([1, 2, 31, 45, 61, 62])),
                               int(rng.integers(INT32_MIN, INT32_MAX, endpoint=True)),
                               int(rng.integers(-31, 31)))
        scale = 2.0 ** (p.in_shift - 47) if p.in_shift > 16 else None
    else:
        while True:
            s_x = _log_uniform(rng, -31, 0)
            try:
                p = kernels.gelu_params(s_x, s_x * _log_uniform(rng, -6, 14), act_bits)
                break
            except ValueError:
                continue
        scale = s_x
    x = x_values(rng, size, scale)
    expected = kernels.gelu(x, p).reshape(n_blocks, lanes)
    scalars = {"in_mult": p.in_mult, "in_shift": p.in_shift, "out_mult": p.out_mult,
               "out_shift": p.out_shift}
    return Command(scalars, blocks_of(lanes, x=x), expected)


def add_command(rng: np.random.Generator, lanes: int, act_bits: int, n_blocks: int,
                extreme: bool = False) -> Command:
    """One add parameter set (add_params of random scales, or ``extreme`` raw constants with
    the shortest x shifts, which saturate ux) and random blocks; ``b`` over its whole range
    with its corners."""
    size = lanes * n_blocks
    lo, hi = kernels.act_range(act_bits)
    if extreme:
        p = kernels.AddParams(act_bits, int(rng.integers(1 << 30, 1 << 31)),
                              int(rng.choice([1, 2, 12, 30, 43, 62])),
                              int(rng.integers(1 << 30, 1 << 31)),
                              int(rng.integers(act_bits + 1, 63)))
        scale = None
    else:
        while True:
            s_x, s_out = _log_uniform(rng, -30, 0), _log_uniform(rng, -20, 0)
            try:
                p = kernels.add_params(s_x, s_out * _log_uniform(rng, -8, 16 - act_bits),
                                       s_out, act_bits)
                break
            except ValueError:
                continue
        scale = s_x / s_out * 2.0 ** -(act_bits - 2)
    x = x_values(rng, size, scale)
    b = np.where(rng.random(size) < 0.2, rng.choice([lo, hi, 0, -1, 1], size),
                 rng.integers(lo, hi, size, endpoint=True))
    expected = kernels.add(x, b, p).reshape(n_blocks, lanes)
    scalars = {"x_mult": p.x_mult, "x_shift": p.x_shift, "b_mult": p.b_mult,
               "b_shift": p.b_shift}
    return Command(scalars, blocks_of(lanes, x=x, b=b), expected)


# ---- tests -------------------------------------------------------------------------------

FLOWS = [(1.0, 1.0), (0.7, 0.35), (0.9, 0.8)]   # (p_valid, p_ready)


@pytest.mark.parametrize("target, lanes, n_blocks, flow", [
    (GENERIC, 2, 120, FLOWS[1]), (GENERIC, 8, 30, FLOWS[2]), (ECP5, 2, 60, FLOWS[2]),
    (ECP5, 8, 16, FLOWS[1]),
], ids=["generic-2", "generic-8", "ecp5-2", "ecp5-8"])
def test_prescale(target, lanes, n_blocks, flow):
    rng = np.random.default_rng(1300 + lanes)
    dut = SoloLanes(PrescaleLanes(lanes=lanes, tag_shape=TAG, target=target))
    run(dut, [prescale_command(rng, lanes, n_blocks)], rng, p_valid=flow[0], p_ready=flow[1],
        name=f"prescale_{lanes}")


@pytest.mark.parametrize("target, lanes, act_bits, n_cmds, flow", [
    (GENERIC, 2, 8, 6, FLOWS[1]), (GENERIC, 2, 16, 6, FLOWS[2]), (GENERIC, 8, 16, 2, FLOWS[1]),
    (ECP5, 2, 16, 3, FLOWS[2]), (ECP5, 8, 8, 1, FLOWS[1]),
], ids=["generic-2-8", "generic-2-16", "generic-8-16", "ecp5-2-16", "ecp5-8-8"])
def test_gelu(target, lanes, act_bits, n_cmds, flow):
    rng = np.random.default_rng(1310 + lanes + act_bits)
    dut = SoloLanes(GeluLanes(lanes=lanes, act_bits=act_bits, tag_shape=TAG, target=target))
    cmds = [gelu_command(rng, lanes, act_bits, 48 // lanes, extreme=k % 3 == 2)
            for k in range(n_cmds)]
    run(dut, cmds, rng, p_valid=flow[0], p_ready=flow[1], name=f"gelu_{lanes}_{act_bits}")


@pytest.mark.parametrize("target, lanes, act_bits, n_cmds, flow", [
    (GENERIC, 2, 8, 6, FLOWS[2]), (GENERIC, 2, 16, 6, FLOWS[1]), (GENERIC, 8, 8, 2, FLOWS[1]),
    (ECP5, 2, 8, 3, FLOWS[1]), (ECP5, 8, 16, 1, FLOWS[2]),
], ids=["generic-2-8", "generic-2-16", "generic-8-8", "ecp5-2-8", "ecp5-8-16"])
def test_add(target, lanes, act_bits, n_cmds, flow):
    rng = np.random.default_rng(1320 + lanes + act_bits)
    dut = SoloLanes(AddLanes(lanes=lanes, act_bits=act_bits, tag_shape=TAG, target=target))
    cmds = [add_command(rng, lanes, act_bits, 48 // lanes, extreme=k % 3 == 2)
            for k in range(n_cmds)]
    run(dut, cmds, rng, p_valid=flow[0], p_ready=flow[1], name=f"add_{lanes}_{act_bits}")


def _u_corners() -> list[int]:
    """Inputs that are their own u (in_mult 2**30, in_shift 30): the table's ends and segment
    edges, just inside and beyond GELU_U_MAX, both signs, and the int32 extremes."""
    seg = 1 << kernels.GELU_R_BITS
    u_max = kernels.GELU_U_MAX
    pos = [0, 1, 2047, 2048, 2049, seg - 1, seg, seg + 1, 5 * seg + seg // 2, u_max - seg,
           u_max - 1, u_max, u_max + 1, u_max + 2, 1 << 20, (1 << 20) + 1, 1 << 21,
           (1 << 21) + 1, 1 << 30, INT32_MAX]
    return pos + [-v for v in pos] + [INT32_MIN, INT32_MIN + 1]


def gelu_corner_commands(lanes: int, act_bits: int) -> list[Command]:
    """u = x exactly over the table's corners, with outputs scaled to stay mostly inside
    act_bits, with a left output shift that wraps, and with saturating outputs."""
    x = np.array(_u_corners(), dtype=np.int64)
    x = np.concatenate([x, x[:(-len(x)) % lanes]])
    cmds = []
    for out_mult, out_shift in (((1 << 30) + 12345, act_bits - 19), (1 << 30, 3),
                                (INT32_MAX, 0), (INT32_MIN, -31)):
        p = kernels.GeluParams(act_bits, 1 << 30, 30, out_mult, out_shift)
        scalars = {"in_mult": p.in_mult, "in_shift": p.in_shift, "out_mult": out_mult,
                   "out_shift": out_shift}
        cmds.append(Command(scalars, blocks_of(lanes, x=x),
                            kernels.gelu(x, p).reshape(-1, lanes)))
    return cmds


def add_corner_commands(lanes: int, act_bits: int) -> list[Command]:
    """x and b at their extremes with the shortest and longest shifts: ux saturating, ub at
    the bound add_params allows, sums that saturate the output and ones exactly at a tie."""
    lo, hi = kernels.act_range(act_bits)
    xs = np.array([0, 1, -1, 2048, -2048, 2047, -2049, INT32_MAX, INT32_MIN, 1 << 20,
                   -(1 << 20), 6144, -6144, 12345, -12345, 1 << 30], dtype=np.int64)
    bs = np.array([0, hi, lo, 1, -1, hi, lo, lo, hi, 0, 0, 1, -1, lo, hi, -1], dtype=np.int64)
    pad = (-len(xs)) % lanes
    xs, bs = np.concatenate([xs, xs[:pad]]), np.concatenate([bs, bs[:pad]])
    cmds = []
    b_shift = 32 - (32 - kernels.ADD_FRAC - act_bits) + 1 + 10   # ub well inside its bound
    for x_mult, x_shift, b_mult in (((1 << 30), 30, 1 << 30), (INT32_MAX, 1, INT32_MAX),
                                    ((1 << 30) + 1, 62, (1 << 31) - 1), (INT32_MAX, 31, 1 << 30)):
        p = kernels.AddParams(act_bits, x_mult, x_shift, b_mult, b_shift)
        scalars = {"x_mult": x_mult, "x_shift": x_shift, "b_mult": b_mult, "b_shift": b_shift}
        cmds.append(Command(scalars, blocks_of(lanes, x=xs, b=bs),
                            kernels.add(xs, bs, p).reshape(-1, lanes)))
    return cmds


@pytest.mark.parametrize("act_bits", [8, 16])
@pytest.mark.parametrize("target", [GENERIC, ECP5], ids=["generic", "ecp5"])
def test_gelu_corners(target, act_bits):
    dut = SoloLanes(GeluLanes(lanes=2, act_bits=act_bits, tag_shape=TAG, target=target))
    cmds = gelu_corner_commands(2, act_bits)
    outs = np.concatenate([c.expected.ravel() for c in cmds])
    lo, hi = kernels.act_range(act_bits)
    assert (outs == lo).any() and (outs == hi).any() and (outs == 0).any() \
        and ((outs > lo) & (outs < hi) & (outs != 0)).sum() > 8   # the cases are reached
    run(dut, cmds, np.random.default_rng(1330), p_valid=0.8, p_ready=0.6,
        name=f"gelu_corners_{act_bits}")


@pytest.mark.parametrize("act_bits", [8, 16])
@pytest.mark.parametrize("target", [GENERIC, ECP5], ids=["generic", "ecp5"])
def test_add_corners(target, act_bits):
    dut = SoloLanes(AddLanes(lanes=2, act_bits=act_bits, tag_shape=TAG, target=target))
    cmds = add_corner_commands(2, act_bits)
    outs = np.concatenate([c.expected.ravel() for c in cmds])
    lo, hi = kernels.act_range(act_bits)
    assert (outs == lo).any() and (outs == hi).any() and ((outs > lo) & (outs < hi)).sum() > 8
    run(dut, cmds, np.random.default_rng(1331), p_valid=0.8, p_ready=0.6,
        name=f"add_corners_{act_bits}")


@pytest.mark.parametrize("target", [GENERIC, ECP5], ids=["generic", "ecp5"])
@pytest.mark.parametrize("kind", ["prescale", "gelu", "add"])
def test_throughput_and_latency(kind, target):
    """With the output always ready a block enters on every cycle and each result leaves
    exactly ``latency`` cycles after its block (the documented figures)."""
    rng = np.random.default_rng(1340)
    lanes = 2
    if kind == "prescale":
        dut = SoloLanes(PrescaleLanes(lanes=lanes, tag_shape=TAG, target=target))
        cmds = [prescale_command(rng, lanes, 2 * dut.latency)]
        documented = {GENERIC: 10, ECP5: 15}
    elif kind == "gelu":
        dut = SoloLanes(GeluLanes(lanes=lanes, act_bits=16, tag_shape=TAG, target=target))
        cmds = [gelu_command(rng, lanes, 16, 2 * dut.latency)]
        documented = {GENERIC: 26, ECP5: 37}
    else:
        dut = SoloLanes(AddLanes(lanes=lanes, act_bits=8, tag_shape=TAG, target=target))
        cmds = [add_command(rng, lanes, 8, 2 * dut.latency)]
        documented = {GENERIC: 15, ECP5: 17}
    assert dut.latency == documented[target]
    run(dut, cmds, rng, name=f"timing_{kind}", check_timing=True)


def test_full_backpressure():
    """The output stalled for longer than the pipeline: the input stops after exactly
    ``credits`` blocks, nothing is lost, and everything drains in order."""
    rng = np.random.default_rng(1341)
    dut = SoloLanes(AddLanes(lanes=2, act_bits=16, tag_shape=TAG))
    cmd = add_command(rng, 2, 16, 3 * dut.credits)
    accepted = []

    async def producer(ctx):
        ctx.set(dut.params, cmd.scalars)
        for k, blk in enumerate(cmd.blocks):
            ctx.set(dut.i.payload, dict(blk, tag=k % 32))
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            accepted.append(k)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 0)
        await ctx.tick().repeat(3 * dut.latency)
        assert len(accepted) == dut.credits, f"{len(accepted)} blocks taken, {dut.credits} credits"
        got = []
        while len(got) < len(cmd.blocks):
            ctx.set(dut.o.ready, rng.random() < 0.5)
            if ctx.get(dut.o.ready) and ctx.get(dut.o.valid):
                out = ctx.get(dut.o.payload)
                assert out.tag == len(got) % 32
                got.append([out.y[0], out.y[1]])
            await ctx.tick()
        assert got == cmd.expected.tolist()

    simulate(dut, producer, consumer, max_cycles=20 * dut.credits + 200, name="backpressure")


def test_struct_tag_and_rtlil():
    """A structured tag (the unit's row / last / address bookkeeping) elaborates, and the
    ECP5 lanes instantiate MULT18X18D (no models) with the documented count per lane, in the
    bank of :class:`SoloLanes` (the datapath itself has none)."""
    from amaranth.lib import data
    tag = data.StructLayout({"row": unsigned(12), "last": unsigned(1), "addr": unsigned(16)})
    for cls, kw, dsps in ((PrescaleLanes, {}, 3), (GeluLanes, {"act_bits": 16}, 9),
                          (AddLanes, {"act_bits": 8}, 5)):
        dut = cls(lanes=1, tag_shape=tag, target=MultiplierTarget(family="ecp5"), **kw)
        assert dut.products == dsps
        text = rtlil.convert(SoloLanes(dut))
        assert text.count("cell \\MULT18X18D") == dsps, cls.__name__


def test_constructor_errors():
    with pytest.raises(ValueError, match="lanes"):
        PrescaleLanes(lanes=0, tag_shape=TAG)
    with pytest.raises(ValueError, match="lanes"):
        GeluLanes(lanes=True, act_bits=8, tag_shape=TAG)
    with pytest.raises(ValueError, match="act_bits"):
        AddLanes(lanes=2, act_bits=12, tag_shape=TAG)
    with pytest.raises(TypeError, match="tag_shape"):
        AddLanes(lanes=2, act_bits=8, tag_shape="tag")
    with pytest.raises(TypeError, match="target"):
        GeluLanes(lanes=2, act_bits=8, tag_shape=TAG, target="ecp5")
    with pytest.raises(ValueError, match="ice40"):
        PrescaleLanes(lanes=2, tag_shape=TAG, target=MultiplierTarget(family="ice40"))


@pytest.mark.slow
@pytest.mark.parametrize("act_bits", [8, 16])
def test_long_random_ecp5(act_bits):
    """Many parameter sets on the ECP5 pipelines at L = 8 (about 40 s each)."""
    rng = np.random.default_rng(1350 + act_bits)
    lanes = 8
    run(SoloLanes(PrescaleLanes(lanes=lanes, tag_shape=TAG, target=ECP5)),
        [prescale_command(rng, lanes, 400)], rng, p_valid=0.8, p_ready=0.5, name="long_pre")
    run(SoloLanes(GeluLanes(lanes=lanes, act_bits=act_bits, tag_shape=TAG, target=ECP5)),
        [gelu_command(rng, lanes, act_bits, 24, extreme=k % 4 == 3) for k in range(16)],
        rng, p_valid=0.9, p_ready=0.7, name="long_gelu")
    run(SoloLanes(AddLanes(lanes=lanes, act_bits=act_bits, tag_shape=TAG, target=ECP5)),
        [add_command(rng, lanes, act_bits, 24, extreme=k % 4 == 3) for k in range(16)],
        rng, p_valid=0.9, p_ready=0.7, name="long_add")


class _PrescaledGelu(wiring.Component):
    """PrescaleLanes into GeluLanes, as the unit chains them for ``VGELU`` with ``pre``: the
    stream handshake straight through, the int32 results as GELU's ``x``."""

    def __init__(self, lanes: int, act_bits: int, target):
        self.pre = SoloLanes(PrescaleLanes(lanes=lanes, tag_shape=TAG, target=target))
        self.gelu = SoloLanes(GeluLanes(lanes=lanes, act_bits=act_bits, tag_shape=TAG,
                                        target=target))
        self.lanes = lanes
        self.latency = self.pre.latency + self.gelu.latency
        super().__init__({
            "i": In(self.pre.i.signature.flip()),
            "o": Out(self.gelu.o.signature),
            "pre_params": In(self.pre.params.shape()),
            "params": In(self.gelu.params.shape()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.pre, m.submodules.gelu = self.pre, self.gelu
        wiring.connect(m, wiring.flipped(self.i), self.pre.i)
        wiring.connect(m, self.gelu.o, wiring.flipped(self.o))
        m.d.comb += [
            self.pre.params.eq(self.pre_params),
            self.gelu.params.eq(self.params),
            self.gelu.i.valid.eq(self.pre.o.valid),
            self.pre.o.ready.eq(self.gelu.i.ready),
            self.gelu.i.payload.x.eq(self.pre.o.payload.y),
            self.gelu.i.payload.tag.eq(self.pre.o.payload.tag),
        ]
        return m


@pytest.mark.parametrize("target", [GENERIC, ECP5], ids=["generic", "ecp5"])
def test_prescaled_gelu_chain(target):
    """``gelu(x, params, pre)`` bit-exactly from the two datapaths in a row, with per-block
    prescale parameters riding alongside one GELU parameter set."""
    rng = np.random.default_rng(1360)
    lanes, act_bits, n_blocks = 2, 16, 24
    size = lanes * n_blocks
    s_in = 2.0 ** rng.uniform(-24, -14, size)
    pre = kernels.prescale_params(s_in, 2 * s_in.max(), rng.normal(0, 0.5, size))
    p = kernels.gelu_params(2 * s_in.max(), 8 / 32767, act_bits)
    x = np.clip(np.round(rng.normal(0, 3, size) / s_in), INT32_MIN, INT32_MAX).astype(np.int64)
    x[:4] = [INT32_MIN, INT32_MAX, 0, -1]
    expected = kernels.gelu(x, p, pre=pre).reshape(n_blocks, lanes)
    params = [[{"bias": int(pre["bias"][i]), "multiplier": int(pre["multiplier"][i]),
                "shift": int(pre["shift"][i]), "zero_point": 0, "lo": -128, "hi": 127}
               for i in range(b * lanes, (b + 1) * lanes)] for b in range(n_blocks)]
    dut = _PrescaledGelu(lanes, act_bits, target)
    cmd = Command(None, blocks_of(lanes, x=x), expected, params)
    scalars = {"in_mult": p.in_mult, "in_shift": p.in_shift, "out_mult": p.out_mult,
               "out_shift": p.out_shift}

    run(dut, [cmd], rng, p_valid=0.8, p_ready=0.5, name="prescaled_gelu",
        block_params=dut.pre_params, fixed=(dut.params, scalars))
