# amaranth: UnusedElaboratable=no
# (test_constructor_errors builds components that raise in __init__ and are never elaborated)
"""OutputStage in amaranth.sim, bit-exact against sim.numerics.output_stage."""

from dataclasses import dataclass

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.back import rtlil
from amaranth.lib import data
from amaranth.sim import Simulator

from serrano.hw import isa
from serrano.hw.config import AcceleratorConfig
from serrano.hw.mult import MultiplierTarget
from serrano.hw.output_ice40 import ICE40OutputStage
from serrano.hw.output_stage import OutputStage, output_stage_class
from serrano.hw.output_wide import ECP5OutputStage, GenericOutputStage
from serrano.sim.numerics import INT32_MAX, INT32_MIN, output_stage

PARAM_FIELDS = ("bias", "multiplier", "shift", "zero_point", "lo", "hi")

# Plain registered `*` partial products, and the ECP5 MULT18X18D ones (their cycle-equivalent
# model) with the longer latency they bring.
TARGETS = [None, MultiplierTarget(family="ecp5", simulation=True),
           MultiplierTarget(family="ice40", simulation=True)]
TARGET_IDS = ["generic", "ecp5", "ice40"]
targets = pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)


@dataclass
class Row:
    """One input row: ``cols`` accumulators and ``cols`` parameter sets."""
    acc: np.ndarray                 # int64 [cols]
    params: dict[str, np.ndarray]   # field -> int64 [cols]

    def expected(self) -> np.ndarray:
        p = self.params
        # The hardware saturates the 8-bit shift field into numerics.md's [-31, 30].
        return output_stage(self.acc, p["bias"], p["multiplier"], np.clip(p["shift"], -31, 30),
                            p["zero_point"], p["lo"], p["hi"])


# (acc, bias, multiplier, shift, zero_point, lo, hi), one output value each.
CORNER_VALUES = [
    # plain values, default clamp
    (0, 0, 1 << 30, 0, 0, -128, 127),
    (100, 0, 1 << 30, -1, 3, -128, 127),
    (127, 0, INT32_MAX, 0, 0, -128, 127),
    (-128, 0, INT32_MAX, 0, 0, -128, 127),
    # SRDHM ties, positive and negative (x * 0.5 with x odd)
    (1, 0, 1 << 30, 0, 0, -128, 127),
    (-1, 0, 1 << 30, 0, 0, -128, 127),
    (3, 0, 1 << 30, 0, 0, -128, 127),
    (-3, 0, 1 << 30, 0, 0, -128, 127),
    # RDBPOT ties and near-ties: (2k+1) * 2**(e-1) / 2**e, both signs
    (6, 0, 1 << 30, -1, 0, -128, 127),     # SRDHM 3, /2 = 1.5
    (-6, 0, 1 << 30, -1, 0, -128, 127),
    (10, 0, 1 << 30, -2, 0, -128, 127),    # 5 / 4: below the tie
    (-10, 0, 1 << 30, -2, 0, -128, 127),
    (12, 0, 1 << 30, -2, 0, -128, 127),    # 6 / 4 = 1.5
    (-12, 0, 1 << 30, -2, 0, -128, 127),
    (14, 0, 1 << 30, -2, 0, -128, 127),    # 7 / 4: above the tie
    (-14, 0, 1 << 30, -2, 0, -128, 127),
    (3 << 20, 0, 1 << 30, -20, 0, -128, 127),   # 1.5 * 2**20 / 2**20
    (-(3 << 20), 0, 1 << 30, -20, 0, -128, 127),
    # INT32_MIN * INT32_MIN saturates, then shifted, then + zero point (int32 add wraps)
    (INT32_MIN, 0, INT32_MIN, 0, 0, -128, 127),
    (INT32_MIN, 0, INT32_MIN, 0, 1, -128, 127),
    (INT32_MIN, 0, INT32_MIN, 0, 127, -128, 127),
    (INT32_MIN, 0, INT32_MIN, -31, 0, -128, 127),
    (INT32_MIN, 0, INT32_MIN, -24, 0, -128, 127),
    (INT32_MIN, 0, INT32_MAX, -31, 0, -128, 127),
    (INT32_MAX, 0, INT32_MIN, -31, 0, -128, 127),
    (INT32_MAX, 0, INT32_MAX, -31, 0, -128, 127),
    # the products next to 2**62 and the most negative one: h just inside int32
    (INT32_MIN, 0, INT32_MIN + 1, 0, 0, -128, 127),
    (INT32_MIN + 1, 0, INT32_MIN, -31, 0, -128, 127),
    (INT32_MIN, 0, INT32_MIN + 1, -31, 0, -128, 127),
    (INT32_MIN, 0, INT32_MAX, 0, 0, -128, 127),
    (INT32_MAX, 0, INT32_MIN, -31, -1, -128, 127),
    (-(1 << 31), 0, -(1 << 31), -30, 0, -128, 127),
    # right shift 0 and 31
    (INT32_MAX, 0, INT32_MAX, 0, 0, -128, 127),
    (1 << 30, 0, 1 << 30, -31, 0, -128, 127),     # 2**29 / 2**31 = 0.25 -> 0
    (-(1 << 30), 0, INT32_MAX, -31, 0, -128, 127),  # ~-0.5 -> tie region
    (INT32_MIN, 0, 1 << 30, -31, 0, -128, 127),
    (INT32_MIN, 0, INT32_MAX, -30, 0, -128, 127),
    # left shifts that overflow int32
    (1, 0, 1 << 30, 30, 0, -128, 127),
    (2, 0, 1 << 30, 30, 0, -128, 127),            # 2 << 30 wraps to INT32_MIN
    (3, 0, 1 << 30, 30, 0, -128, 127),
    (-3, 0, INT32_MIN, 30, 0, -128, 127),
    (0x1234_5678, 0, 1 << 30, 8, 0, -128, 127),
    (-0x1234_5678, 0, 1 << 30, 4, 0, -128, 127),
    (255, 0, INT32_MIN, 24, 0, -128, 127),
    # multiplier 0 and negative multipliers
    (12345, 0, 0, 0, 7, -128, 127),
    (INT32_MIN, 0, 0, 30, -7, -128, 127),
    (1000, 0, -(1 << 30), -2, 0, -128, 127),
    (-1000, 0, INT32_MIN + 1, -5, 0, -128, 127),
    # acc + bias wraps in int32
    (INT32_MAX, 1, 1 << 30, 0, 0, -128, 127),
    (INT32_MIN, -1, 1 << 30, -31, 0, -128, 127),
    (INT32_MAX, INT32_MAX, 1 << 30, -30, 0, -128, 127),
    (INT32_MIN, INT32_MIN, 1 << 30, 0, 0, -128, 127),
    # clamps: ReLU (lo = zero_point), narrow ranges, lo > hi, extreme zero points
    (-500, 0, 1 << 30, 0, -5, -5, 127),
    (500, 0, 1 << 30, 0, -5, -5, 127),
    (-500, 0, 1 << 30, -2, 0, 0, 127),
    (40, 0, 1 << 30, 0, 0, 10, 15),
    (0, 0, 1 << 30, 0, 0, 20, -20),              # lo > hi: hi
    (1 << 20, 0, 1 << 30, 0, 0, 20, -20),
    (-200, 0, 1 << 30, 0, 127, -128, 127),
    (200, 0, 1 << 30, 0, -128, -128, 127),
    (INT32_MAX, 0, INT32_MAX, 0, -128, -128, 127),
    # shift field outside [-31, 30]: the hardware saturates it
    (1, 0, 1 << 30, 31, 0, -128, 127),
    (3, 0, 1 << 30, 127, 0, -128, 127),
    (INT32_MAX, 0, INT32_MAX, -32, 0, -128, 127),
    (-(1 << 30), 0, INT32_MAX, -128, 0, -128, 127),
]


def corner_rows(cols: int) -> list[Row]:
    """CORNER_VALUES packed ``cols`` per row, each value visiting several columns (the list is
    rotated once per column so every column's datapath sees every case)."""
    values = []
    for rot in range(min(cols, 3)):
        values += CORNER_VALUES[rot:] + CORNER_VALUES[:rot]
    values += values[:(-len(values)) % cols]
    rows = []
    for i in range(0, len(values), cols):
        chunk = np.array(values[i:i + cols], dtype=np.int64)
        rows.append(Row(chunk[:, 0], {f: chunk[:, k + 1] for k, f in enumerate(PARAM_FIELDS)}))
    return rows


def random_rows(rng: np.random.Generator, cols: int, count: int) -> list[Row]:
    """Random rows: full-range and small accumulators, realistic and arbitrary parameters,
    a new parameter set on every row (so misaligned parameter pipelines show)."""
    rows = []
    for _ in range(count):
        acc = np.where(rng.random(cols) < 0.5,
                       rng.integers(INT32_MIN, INT32_MAX, cols, endpoint=True),
                       rng.integers(-(1 << 17), 1 << 17, cols))
        realistic = rng.random(cols) < 0.7
        mul = np.where(realistic, rng.integers(1 << 30, 1 << 31, cols),
                       rng.integers(INT32_MIN, INT32_MAX, cols, endpoint=True))
        shift = np.where(realistic, rng.integers(-20, 1, cols), rng.integers(-31, 31, cols))
        bias = np.where(rng.random(cols) < 0.8, rng.integers(-(1 << 16), 1 << 16, cols),
                        rng.integers(INT32_MIN, INT32_MAX, cols, endpoint=True))
        zp = rng.integers(-128, 128, cols)
        relu = rng.random(cols) < 0.3
        lo = np.where(relu, zp, rng.integers(-128, 0, cols))
        hi = rng.integers(0, 128, cols)
        rows.append(Row(acc, dict(bias=bias, multiplier=mul, shift=shift, zero_point=zp,
                                  lo=lo, hi=hi)))
    return rows


def halfword_rows(rng: np.random.Generator, cols: int, count: int) -> list[Row]:
    """Rows whose ``acc + bias`` (shift 0) and multiplier are built from extreme 16-bit halves
    (0, 1, 0x7FFF, 0x8000, 0xFFFF and random), so every partial product of the split 32x32
    multiply meets its sign and carry corners, with small and large right shifts."""
    halves = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF], dtype=np.int64)

    def words(size):
        pick = lambda: np.where(rng.random(size) < 0.8, rng.choice(halves, size),
                                rng.integers(0, 1 << 16, size))
        w = (pick() << 16) | pick()
        return np.where(w >= 1 << 31, w - (1 << 32), w)

    rows = []
    for _ in range(count):
        shift = np.where(rng.random(cols) < 0.5, 0, rng.integers(-31, 1, cols))
        zp = rng.integers(-128, 128, cols)
        rows.append(Row(words(cols), dict(bias=np.zeros(cols, dtype=np.int64),
                                          multiplier=words(cols), shift=shift, zero_point=zp,
                                          lo=np.full(cols, -128), hi=np.full(cols, 127))))
    return rows


def _param_list(row: Row) -> list[dict[str, int]]:
    return [{f: int(row.params[f][n]) for f in PARAM_FIELDS} for n in range(len(row.acc))]


def run_stream(config: AcceleratorConfig, stream: list[Row | None], tag_shape,
               make_tag, rng: np.random.Generator,
               target: MultiplierTarget | None = None) -> None:
    """Drive ``stream`` (``None`` = an idle cycle) into an OutputStage one entry per cycle and
    check every output bit-exactly, with its tag, exactly ``latency`` cycles later; check that
    no ``o_valid`` appears without an input row."""
    dut = OutputStage(config, tag_shape, target)
    latency = dut.latency
    cols = config.cols
    budget = len(stream) + latency + 4  # cycles; the last row must have come out by then
    seen: list[tuple[int, bool, list[int], object]] = []  # (cycle, valid, data, tag)

    async def bench(ctx):
        for cycle in range(budget):
            row = stream[cycle] if cycle < len(stream) else None
            if row is None:
                # Idle cycle: garbage on the data inputs must not turn into an output.
                junk = Row(rng.integers(INT32_MIN, INT32_MAX, cols, endpoint=True),
                           {f: rng.integers(-128, 128, cols) for f in PARAM_FIELDS})
                ctx.set(dut.i_valid, 0)
                ctx.set(dut.i_acc, [int(v) for v in junk.acc])
                ctx.set(dut.i_params, _param_list(junk))
                ctx.set(dut.i_tag, make_tag(-1, junk))
            else:
                ctx.set(dut.i_valid, 1)
                ctx.set(dut.i_acc, [int(v) for v in row.acc])
                ctx.set(dut.i_params, _param_list(row))
                ctx.set(dut.i_tag, make_tag(cycle, row))
            valid = bool(ctx.get(dut.o_valid))
            if valid:
                seen.append((cycle, valid, [int(ctx.get(dut.o_data[n])) for n in range(cols)],
                             ctx.get(dut.o_tag)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()

    expected_cycles = [c + latency for c, row in enumerate(stream) if row is not None]
    got_cycles = [c for c, *_ in seen]
    missing = sorted(set(expected_cycles) - set(got_cycles))
    assert not missing, (f"{len(missing)} rows never came out within the {budget}-cycle "
                         f"budget (latency {latency}); first expected at cycles {missing[:5]}")
    assert got_cycles == expected_cycles, (
        f"o_valid at cycles {sorted(set(got_cycles) - set(expected_cycles))[:5]} without a row "
        f"presented {latency} cycles earlier")
    mismatches = []
    for cycle, _, got, tag in seen:
        in_cycle = cycle - latency
        row = stream[in_cycle]
        want = row.expected().tolist()
        if got != want:
            mismatches.append((in_cycle, row.acc.tolist(), _param_list(row), got, want))
        check_tag = make_tag.check  # (tag, input cycle, row) -> message or None
        msg = check_tag(tag, in_cycle, row)
        assert msg is None, f"row entered in cycle {in_cycle}: {msg}"
    assert not mismatches, (f"{len(mismatches)} rows differ from sim.numerics.output_stage; "
                            f"first (cycle, acc, params, got, want): {mismatches[0]}")


class StructTag:
    """The store unit's kind of tag: a row index and the raw int32 row."""

    def __init__(self, cols: int):
        self.shape = data.StructLayout({"index": unsigned(16),
                                        "raw": data.ArrayLayout(signed(32), cols)})

    def __call__(self, cycle: int, row: Row) -> dict:
        return {"index": cycle & 0xFFFF, "raw": [int(v) for v in row.acc]}

    def check(self, tag, cycle: int, row: Row) -> str | None:
        index = int(tag.index)
        raw = [int(tag.raw[n]) for n in range(len(row.acc))]
        if index != cycle & 0xFFFF or raw != row.acc.tolist():
            return f"tag (index {index}, raw {raw}) != (index {cycle}, raw {row.acc.tolist()})"
        return None


class CounterTag:
    """A plain unsigned tag: the input cycle number."""
    shape = unsigned(12)

    def __call__(self, cycle: int, row: Row) -> int:
        return cycle & 0xFFF

    def check(self, tag, cycle: int, row: Row) -> str | None:
        return None if int(tag) == cycle & 0xFFF else f"tag {int(tag)} != {cycle & 0xFFF}"


def _stream(rows: list[Row], rng: np.random.Generator, gaps: bool) -> list[Row | None]:
    """Rows back to back, or with seeded random gaps (single idle cycles and longer ones)."""
    if not gaps:
        return list(rows)
    out: list[Row | None] = []
    for row in rows:
        r = rng.random()
        if r < 0.2:
            out.append(None)
        elif r < 0.25:
            out += [None] * int(rng.integers(2, 9))
        out.append(row)
    return out


@targets
@pytest.mark.parametrize("cols", [1, 3, 4])
@pytest.mark.parametrize("gaps", [False, True], ids=["back_to_back", "gaps"])
def test_stream_corner_and_random_rows(cols: int, gaps: bool, target):
    rng = np.random.default_rng(1000 * cols + gaps)
    config = AcceleratorConfig(rows=4, cols=cols)
    rows = corner_rows(cols)
    rows += random_rows(rng, cols, 300 - len(rows))
    rng.shuffle(rows[len(rows) // 2:])  # corner rows also land between random ones
    make_tag = StructTag(cols)
    run_stream(config, _stream(rows, rng, gaps), make_tag.shape, make_tag, rng, target)


@targets
@pytest.mark.parametrize("cols", [2, 5])
def test_stream_split_product_corners(cols: int, target):
    """The 32x32 product is assembled from 16-bit partial products: hammer their corners."""
    rng = np.random.default_rng(77 + cols)
    config = AcceleratorConfig(rows=4, cols=cols)
    make_tag = StructTag(cols)
    run_stream(config, _stream(halfword_rows(rng, cols, 400), rng, gaps=True), make_tag.shape,
               make_tag, rng, target)


@targets
def test_plain_tag_shape_and_single_rows(target):
    """Isolated rows (long gaps), a plain unsigned tag, the default 8-column config."""
    rng = np.random.default_rng(5)
    config = AcceleratorConfig()
    rows = random_rows(rng, config.cols, 12) + corner_rows(config.cols)[:4]
    stream: list[Row | None] = []
    for row in rows:
        stream += [row] + [None] * int(rng.integers(1, 9))
    run_stream(config, stream, CounterTag.shape, CounterTag(), rng, target)


def test_latency_and_ports():
    dut = OutputStage(AcceleratorConfig(cols=3), unsigned(5))
    assert dut.latency >= 1
    assert dut.target == MultiplierTarget()
    assert dut.i_acc.shape() == data.ArrayLayout(signed(32), 3)
    assert dut.i_params.shape() == data.ArrayLayout(isa.OutputParams, 3)
    assert dut.o_data.shape() == data.ArrayLayout(signed(8), 3)
    assert len(dut.o_tag) == 5 and len(dut.i_tag) == 5
    assert f"s{dut.latency}_out" in rtlil.convert(dut)  # elaborates and lowers without errors


def test_latency_per_target():
    """The ECP5 Karatsuba products are 3-cycle DSPs (input, pipeline and output registers, no
    fabric registers after them), behind an input stage and a stage for the byte shift,
    and RoundingDivideByPOT takes three stages;
    the generic path keeps a single registered product, so no flip-flop is added there; iCE40 has
    its own compact 8-stage pipeline with the products in SB_MAC16 registers. The target can
    be given by keyword or as the third positional argument."""
    config = AcceleratorConfig(cols=2)
    generic = OutputStage(config, unsigned(1))
    ice40 = OutputStage(config, unsigned(1), MultiplierTarget(family="ice40"))
    ecp5 = OutputStage(config, unsigned(1), target=MultiplierTarget(family="ecp5"))
    assert generic.latency == 9
    assert ecp5.latency == generic.latency + 2 + 4
    assert ice40.latency == 8
    il40 = rtlil.convert(ice40)
    assert il40.count("SB_MAC16") >= 4 * config.cols
    assert f"s{ice40.latency}_out" in il40
    assert "SB_MAC16" not in rtlil.convert(OutputStage(
        config, unsigned(1), MultiplierTarget(family="ice40", simulation=True)))
    il = rtlil.convert(ecp5)
    assert il.count("MULT18X18D") >= 3 * config.cols  # one instance per Karatsuba product
    assert f"s{ecp5.latency}_out" in il
    assert "MULT18X18D" not in rtlil.convert(OutputStage(
        config, unsigned(1), MultiplierTarget(family="ecp5", simulation=True)))


@pytest.mark.parametrize("config, tag_shape, words", [
    (object(), unsigned(1), "config"),
    ({"cols": 4}, unsigned(1), "config"),
    (AcceleratorConfig(cols=2), "wide", "tag_shape"),
    (AcceleratorConfig(cols=2), None, "tag_shape"),
])
def test_constructor_errors(config, tag_shape, words):
    with pytest.raises(TypeError, match=words):
        OutputStage(config, tag_shape)


def test_constructor_rejects_bad_target():
    with pytest.raises(TypeError, match="target"):
        OutputStage(AcceleratorConfig(cols=2), unsigned(1), "ecp5")


def test_entry_point_picks_the_family_pipeline():
    """``OutputStage(...)`` builds a separate class per family; each can also be built by name,
    and the class matches :func:`output_stage_class`."""
    config = AcceleratorConfig(cols=2)
    cases = [(None, GenericOutputStage, 9),
             (MultiplierTarget(family="generic"), GenericOutputStage, 9),
             (MultiplierTarget(family="ecp5"), ECP5OutputStage, 15),
             (MultiplierTarget(family="ice40", simulation=True), ICE40OutputStage, 8)]
    for target, cls, latency in cases:
        dut = OutputStage(config, unsigned(1), target)
        assert type(dut) is cls is output_stage_class(target)
        assert isinstance(dut, OutputStage) and dut.latency == latency
        assert dut.target == (target or MultiplierTarget())
        direct = cls(config, unsigned(1), target)
        assert type(direct) is cls and direct.latency == latency
        assert f"s{latency}_out" in rtlil.convert(direct)
